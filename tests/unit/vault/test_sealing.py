"""Sealed objects and names: any swap, truncation, bit flip or change of kind is detected."""

from __future__ import annotations

import pytest

from storage_pool.errors import IntegrityError
from storage_pool.vault.crypto import OVERHEAD, ObjectCipher
from storage_pool.vault.format import NAMED_KINDS, ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError
from storage_pool.vault.keys import VaultKeys
from storage_pool.vault.names import ObjectNamer, is_object_name, shard_prefixes

SECRET = b"MARKER-sealing-plaintext " * 40


def test_round_trip_and_no_plaintext(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    name = namer.new_name(ObjectKind.INDEX)
    sealed = cipher.seal(ObjectKind.INDEX, name, SECRET)
    assert len(sealed) == len(SECRET) + OVERHEAD
    assert b"MARKER" not in sealed
    assert cipher.open(ObjectKind.INDEX, name, sealed) == SECRET
    # A random nonce: sealing twice gives different bytes.
    assert cipher.seal(ObjectKind.INDEX, name, SECRET) != sealed


def _tampered(
    cipher: ObjectCipher, kind: ObjectKind, name: str, data: bytes
) -> TamperedObjectError:
    with pytest.raises(TamperedObjectError) as info:
        cipher.open(kind, name, data)
    assert isinstance(info.value, IntegrityError)
    assert name in str(info.value)
    return info.value


def test_swapped_objects_are_detected(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    a, b = namer.new_name(ObjectKind.MANIFEST), namer.new_name(ObjectKind.MANIFEST)
    sealed_a = cipher.seal(ObjectKind.MANIFEST, a, b"manifest A")
    err = _tampered(cipher, ObjectKind.MANIFEST, b, sealed_a)
    assert err.name == b
    assert err.kind == ObjectKind.MANIFEST


def test_other_kind_is_detected(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    name = namer.new_name(ObjectKind.INDEX)
    sealed = cipher.seal(ObjectKind.INDEX, name, b"an index")
    _tampered(cipher, ObjectKind.MANIFEST, name, sealed)


def test_truncation_and_bit_flips_are_detected(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    name = namer.new_name(ObjectKind.CATALOG)
    sealed = cipher.seal(ObjectKind.CATALOG, name, SECRET)
    for cut in (0, 3, OVERHEAD - 1, OVERHEAD, len(sealed) - 1):
        _tampered(cipher, ObjectKind.CATALOG, name, sealed[:cut])
    _tampered(cipher, ObjectKind.CATALOG, name, sealed + b"\0")
    for pos in (0, 3, 4, 20, len(sealed) // 2, len(sealed) - 1):
        flipped = bytearray(sealed)
        flipped[pos] ^= 0x01
        _tampered(cipher, ObjectKind.CATALOG, name, bytes(flipped))


def test_an_object_of_another_vault_is_detected(cipher: ObjectCipher, keys: VaultKeys) -> None:
    same_key_other_vault = ObjectCipher(VaultKeys.from_master(b"\x02" * 16, keys.master))
    sealed = same_key_other_vault.seal(ObjectKind.INDEX, "data/00/x", b"x")
    _tampered(cipher, ObjectKind.INDEX, "data/00/x", sealed)


def test_names_are_opaque_and_classified_only_with_the_key(namer: ObjectNamer) -> None:
    names = {kind: [namer.new_name(kind) for _ in range(20)] for kind in NAMED_KINDS}
    stranger = ObjectNamer(VaultKeys.generate(b"\x01" * 16))
    for kind, made in names.items():
        for name in made:
            assert is_object_name(name)
            assert name[:8] in shard_prefixes()
            assert kind.value not in name
            assert namer.kind_of(name) is kind
            assert stranger.kind_of(name) is None
    assert len({n for made in names.values() for n in made}) == 20 * len(NAMED_KINDS)
    with pytest.raises(ValueError, match="no name of their own"):
        namer.new_name(ObjectKind.BLOB)
    for junk in ("stockade-vault.json", "data/ab/" + "0" * 64, "data/00/" + "ab" * 32, "x"):
        assert namer.kind_of(junk) is None
