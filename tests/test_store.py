"""The adapter stores: naming, round trips, hostile ids, crash safety, quarantine.

The tests that take `backend` run against both stores, the files of
:class:`~npcadapt.store.AdapterStore` and Redis (:class:`~npcadapt.store_redis.RedisAdapterStore`,
on a real redis-server, tests/redis_helpers.py): one contract. The others are about files
(fault injection of the file system, temp files, paths)."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

from npcadapt.adapter_meta import AdapterMeta, AdapterSpec, player_key, validate_archetype_name, validate_player_id
from npcadapt.errors import (
    AdapterMismatchError,
    ArchetypeError,
    CorruptAdapterError,
    InvalidInputError,
    PlayerIdError,
    StoreError,
)
from npcadapt.store import AdapterStore
from npcadapt.stores import Store

ARCH = "duelist"
BASE = "base-aaaa"
SHAPES = {
    "actor.0.lora_A": (8, 64),
    "actor.0.lora_B": (128, 8),
    "actor.1.lora_A": (8, 128),
    "actor.1.lora_B": (128, 8),
    "actor.2.lora_A": (8, 128),
    "actor.2.lora_B": (16, 8),
}
SPEC = AdapterSpec(ARCH, BASE, 8, SHAPES)

ACCEPTED_IDS = [
    "../x",
    "/etc/passwd",
    "a/b",
    "..",
    ".",
    "a\x00b",
    "a" * 256,
    "é" * 128,  # exactly 256 UTF-8 bytes
    "admin",
    "\u0430dmin",  # Latin vs Cyrillic 'a'
    "Bob",
    "bob",
    "BOB",
    "caf\u00e9",
    "cafe\u0301",  # NFC vs NFD
    "🙂",
    "C:\\windows\\x",
    "a.safetensors.tmp",
]
REFUSED_IDS = ["", "x" * 10_000, "a" * 257, "é" * 128 + "a", "\ud800", "ok\udfff", b"bob", 42, None, ["bob"]]


def tensors_for(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen).to(dtype) for k, s in SHAPES.items()}


def meta_for(player: str, **kw) -> AdapterMeta:
    fields = dict(
        archetype=ARCH,
        player=player,
        base_hash=BASE,
        rank=8,
        alpha=16.0,
        rslora=False,
        version=1,
        updates=3,
        created=1_700_000_000.25,
        updated=1_700_000_100.5,
        dtype="float32",
    )
    fields.update(kw)
    return AdapterMeta(**fields)


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert bits(a[k]) == bits(b[k]), k


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob("*.tmp"))


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


class FileBackend:
    """The file store, and how a test reaches behind it."""

    def __init__(self, root: Path):
        self.root = root
        self.store: Store = AdapterStore(root)

    def where(self, player: str, archetype: str = ARCH) -> str:
        """What messages name for the player's adapter: its path."""
        assert isinstance(self.store, AdapterStore)
        return str(self.store.path_for(archetype, player))

    def raw(self, player: str) -> bytes | None:
        path = Path(self.where(player))
        return path.read_bytes() if path.exists() else None

    def put_raw(self, player: str, data: bytes) -> None:
        path = Path(self.where(player))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def quarantined(self) -> list[tuple[bytes, str]]:
        """(data, reason note) of each quarantined adapter."""
        assert isinstance(self.store, AdapterStore)
        out = []
        for moved in self.store.quarantined(ARCH):
            note = moved.with_name(moved.name.removesuffix(".safetensors") + ".reason.txt").read_text()
            out.append((moved.read_bytes(), note))
        return out

    def is_empty(self) -> bool:
        return not list((self.root / "adapters").rglob("*.*"))

    def check_name(self, player: str) -> None:
        """The adapter lives inside the store under the hash of the id, never the id."""
        path = Path(self.where(player))
        assert path.resolve().is_relative_to((self.root / "adapters").resolve())
        assert path.name == player_key(player) + ".safetensors"

    def reopen(self) -> Store:
        return AdapterStore(self.root)


class RedisBackend:
    """The Redis store on the session's redis-server (emptied per test)."""

    def __init__(self, url: str):
        from npcadapt.store_redis import RedisAdapterStore

        self.url = url
        self.store = RedisAdapterStore(url)
        self.client = self.store.client

    def where(self, player: str, archetype: str = ARCH) -> str:
        return self.store.key_for(archetype, player)

    def raw(self, player: str) -> bytes | None:
        return self.client.hget(self.where(player), "data")

    def put_raw(self, player: str, data: bytes) -> None:
        self.client.hset(self.where(player), mapping={"data": data, "version": "1"})
        self.client.sadd(f"npcadapt:players:{ARCH}", player_key(player))

    def quarantined(self) -> list[tuple[bytes, str]]:
        return [
            (self.client.hget(k, "data"), self.client.hget(k, "reason").decode()) for k in self.store.quarantined(ARCH)
        ]

    def is_empty(self) -> bool:
        return not self.client.keys("npcadapt:adapter:*")

    def check_name(self, player: str) -> None:
        assert self.where(player) == f"npcadapt:adapter:{ARCH}:{player_key(player)}"
        assert all(k.decode().isascii() for k in self.client.keys("*"))

    def reopen(self) -> Store:
        from npcadapt.store_redis import RedisAdapterStore

        return RedisAdapterStore(self.url)


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "file":
        yield FileBackend(tmp_path / "store")
        return
    b = RedisBackend(request.getfixturevalue("redis_url"))
    yield b
    b.store.close()


# -- names --------------------------------------------------------------------------


def test_accepted_ids_validate_and_hash_to_distinct_keys() -> None:
    keys = {player_key(p) for p in ACCEPTED_IDS}
    assert len(keys) == len(ACCEPTED_IDS)
    for p in ACCEPTED_IDS:
        assert validate_player_id(p) == p
        assert len(player_key(p)) == 64 and player_key(p) == player_key(p).lower()


@pytest.mark.parametrize("bad", REFUSED_IDS, ids=repr)
def test_refused_ids(bad: object, backend) -> None:
    with pytest.raises(PlayerIdError):
        validate_player_id(bad)
    with pytest.raises(PlayerIdError):
        backend.where(bad)
    for call in (backend.store.load, backend.store.read_meta, backend.store.exists, backend.store.delete):
        with pytest.raises(PlayerIdError):
            call(SPEC if call == backend.store.load else ARCH, bad)
    with pytest.raises(PlayerIdError):
        meta_for(bad)  # type: ignore[arg-type]


def test_player_id_error_messages_are_concrete() -> None:
    with pytest.raises(PlayerIdError, match="257 UTF-8 bytes; the limit is 256"):
        validate_player_id("a" * 257)
    with pytest.raises(PlayerIdError, match="must be a str, got bytes"):
        validate_player_id(b"x")


@pytest.mark.parametrize("bad", ["Duelist", "1duelist", "", "a" * 65, "a/b", "../x", "du elist", "duelist\n", None, 3])
def test_bad_archetype_names_refused(bad: object, backend) -> None:
    with pytest.raises(ArchetypeError):
        validate_archetype_name(bad)
    with pytest.raises(ArchetypeError):
        backend.where("bob", bad)
    with pytest.raises(ArchetypeError):
        list(backend.store.players(bad))


def test_good_archetype_names() -> None:
    for name in ["duelist", "a", "a" * 64, "merchant-2", "c_3"]:
        assert validate_archetype_name(name) == name


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip_is_bit_exact(backend, dtype: str) -> None:
    store = backend.store
    tensors = tensors_for(1, getattr(torch, dtype))
    meta = meta_for("bob", dtype=dtype, rslora=True, alpha=0.1 + 0.2, forwarded_upto="1700000000000-3")
    assert str(store.save(tensors, meta)) == backend.where("bob") and backend.raw("bob")
    assert store.exists(ARCH, "bob") and not store.exists(ARCH, "alice")
    got, got_meta = store.load(AdapterSpec(ARCH, BASE, 8, SHAPES), "bob")
    assert_same(got, tensors)
    assert got_meta == meta
    assert store.read_meta(ARCH, "bob") == meta
    assert backend.reopen().load(SPEC, "bob")[1] == meta  # a fresh store reads it too


def test_save_copies_noncontiguous_and_keeps_dtype(backend) -> None:
    store = backend.store
    tensors = tensors_for(2)
    tensors["actor.0.lora_A"] = torch.randn(64, 8).t()  # non-contiguous view
    store.save(tensors, meta_for("p"))
    got, _ = store.load(SPEC, "p")
    assert_same(got, {k: v.contiguous() for k, v in tensors.items()})


def test_metadata_round_trip_and_bad_fields() -> None:
    meta = meta_for("x", alpha=1 / 3, created=0.1, updated=1e9 + 1e-6)
    md = meta.to_metadata()
    assert md["format"] == "npcadapt-adapter/1"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    assert AdapterMeta.from_metadata(md) == meta
    for field, value in [
        ("rank", "8.0"),
        ("rank", "-1"),
        ("rslora", "True"),
        ("alpha", "nan"),
        ("created", "soon"),
        ("dtype", "int32"),
        ("format", "other/1"),
        ("archetype", "Bad Name"),
        ("player", ""),
    ]:
        with pytest.raises(ValueError, match=field):
            AdapterMeta.from_metadata({**md, field: value})
    for field in md:
        with pytest.raises(ValueError, match=field):
            AdapterMeta.from_metadata({k: v for k, v in md.items() if k != field})


def test_save_refuses_unfit_tensors_and_stores_nothing(backend) -> None:
    store = backend.store
    nan = tensors_for(3)
    nan["actor.1.lora_B"][0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):
        store.save(nan, meta_for("p"))
    with pytest.raises(InvalidInputError, match="dtype"):
        store.save(tensors_for(3, torch.bfloat16), meta_for("p"))
    with pytest.raises(InvalidInputError):
        store.save({}, meta_for("p"))
    assert store.load(SPEC, "p") is None
    assert backend.is_empty()


# -- hostile ids ----------------------------------------------------------------------


def test_hostile_ids_are_isolated_entries_named_by_their_hash(backend) -> None:
    store = backend.store
    snapshot: dict[str, bytes] = {}
    for i, player in enumerate(ACCEPTED_IDS):
        store.save(tensors_for(100 + i), meta_for(player))
        backend.check_name(player)
        for other, data in snapshot.items():  # saving one never changes another's bytes
            assert backend.raw(other) == data
        snapshot[player] = backend.raw(player)
    assert len({backend.where(p) for p in ACCEPTED_IDS}) == len(ACCEPTED_IDS)
    for i, player in enumerate(ACCEPTED_IDS):
        got, meta = store.load(SPEC, player)
        assert_same(got, tensors_for(100 + i))
        assert meta.player == player
    assert sorted(store.players(ARCH)) == sorted(ACCEPTED_IDS)
    assert list(store.players("companion")) == []


# -- crash safety ---------------------------------------------------------------------


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _inject(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make one step of a save fail, touching only the store's own temp file / directory."""
    real_write, real_fsync, real_open = os.write, os.fsync, os.open
    enospc = OSError(errno.ENOSPC, "No space left on device")

    def write(fd, data):  # writes half, then the disk is full
        if not _fd_path(fd).endswith(".tmp"):
            return real_write(fd, data)
        if os.fstat(fd).st_size == 0 and len(data) > 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise enospc

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if (step == "fsync_file" and not is_dir and _fd_path(fd).endswith(".tmp")) or (step == "fsync_dir" and is_dir):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    def replace(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    def open_(path, flags, mode=0o777, **kw):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, mode, **kw)

    {
        "open": lambda: monkeypatch.setattr(os, "open", open_),
        "write": lambda: monkeypatch.setattr(os, "write", write),
        "fsync_file": lambda: monkeypatch.setattr(os, "fsync", fsync),
        "fsync_dir": lambda: monkeypatch.setattr(os, "fsync", fsync),
        "replace": lambda: monkeypatch.setattr(os, "replace", replace),
    }[step]()


@pytest.mark.parametrize(
    "step,reason",
    [
        ("open", "read-only file system"),
        ("write", "disk full"),
        ("fsync_file", "I/O error"),
        ("replace", "permission denied"),
        ("fsync_dir", "I/O error"),
    ],
)
def test_failed_save_keeps_old_version(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch, step: str, reason: str
) -> None:
    player = "crash/../victim"
    old, new = tensors_for(10), tensors_for(11)
    path = store.save(old, meta_for(player, version=1))
    other = store.save(tensors_for(12), meta_for("bystander"))
    old_bytes, other_bytes = path.read_bytes(), other.read_bytes()
    with monkeypatch.context() as m:
        _inject(m, step)
        with pytest.raises(StoreError) as info:
            store.save(new, meta_for(player, version=2))
    msg = str(info.value)
    assert reason in msg and repr(player) in msg and str(path) in msg
    assert temp_files(store.root) == []
    assert other.read_bytes() == other_bytes
    got, meta = store.load(SPEC, player)
    if step == "fsync_dir":  # the rename happened; only its durability is in doubt
        assert meta.version in (1, 2)
        assert_same(got, old if meta.version == 1 else new)
    else:
        assert path.read_bytes() == old_bytes
        assert meta.version == 1
        assert_same(got, old)


# -- corrupt files ----------------------------------------------------------------------


def _valid_bytes(player: str, **meta_kw) -> bytes:
    return safetensors.torch.save(tensors_for(20), meta_for(player, **meta_kw).to_metadata())


def _header_len(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def _with_tensors(player: str, change) -> bytes:
    tensors = tensors_for(21)
    change(tensors)
    return safetensors.torch.save(tensors, meta_for(player).to_metadata())


def _without_field(player: str, field: str) -> bytes:
    md = meta_for(player).to_metadata()
    del md[field]
    return safetensors.torch.save(tensors_for(22), md)


def _truncated(player: str, where) -> bytes:
    data = _valid_bytes(player)
    return data[: where(data)]


CORRUPT = {
    "random_bytes": (
        lambda p: (
            torch.randint(0, 256, (20_000,), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
            .numpy()
            .tobytes()
        ),
        "not a valid safetensors file",
    ),
    "empty": (lambda p: b"", "not a valid safetensors file"),
    "cut_in_length": (lambda p: _truncated(p, lambda d: 5), "not a valid safetensors file"),
    "cut_in_header": (lambda p: _truncated(p, lambda d: 8 + _header_len(d) // 2), "not a valid safetensors file"),
    "cut_after_header": (lambda p: _truncated(p, lambda d: 8 + _header_len(d)), "not a valid safetensors file"),
    "cut_in_data": (lambda p: _truncated(p, lambda d: len(d) // 2), "not a valid safetensors file"),
    "cut_last_byte": (lambda p: _truncated(p, lambda d: len(d) - 1), "not a valid safetensors file"),
    "no_metadata": (lambda p: safetensors.torch.save(tensors_for(1)), "format"),
    "missing_field": (lambda p: _without_field(p, "updates"), "missing field(s) ['updates']"),
    "nan": (
        lambda p: _with_tensors(p, lambda t: t["actor.2.lora_A"].view(-1).__setitem__(7, float("nan"))),
        "['actor.2.lora_A'] have non-finite",
    ),
    "inf": (
        lambda p: _with_tensors(p, lambda t: t["actor.0.lora_B"].view(-1).__setitem__(0, float("-inf"))),
        "non-finite",
    ),
    "wrong_shape": (
        lambda p: _with_tensors(p, lambda t: t.update({"actor.1.lora_A": torch.zeros(8, 127)})),
        "has shape (8, 127), expected (8, 128)",
    ),
    "missing_tensor": (lambda p: _with_tensors(p, lambda t: t.pop("actor.2.lora_B")), "['actor.2.lora_B'] missing"),
    "extra_tensor": (
        lambda p: _with_tensors(p, lambda t: t.update({"critic.x": torch.zeros(2)})),
        "unexpected tensor(s) ['critic.x']",
    ),
    "int32": (
        lambda p: _with_tensors(p, lambda t: t.update({"actor.0.lora_A": torch.zeros(8, 64, dtype=torch.int32)})),
        "dtype torch.int32",
    ),
    "dtype_vs_meta": (
        lambda p: safetensors.torch.save(tensors_for(1, torch.float16), meta_for(p).to_metadata()),
        "dtype torch.float16, metadata says float32",
    ),
    "rank": (lambda p: _valid_bytes(p, rank=4), "metadata rank is 4"),
    "other_player": (lambda p: _valid_bytes("someone else"), "not " + repr("mallory/../0")),
    "other_archetype": (lambda p: _valid_bytes(p, archetype="companion"), "expected 'duelist'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_data_is_quarantined(backend, case: str) -> None:
    store = backend.store
    player = "mallory/../0"
    store.save(tensors_for(30), meta_for("bystander"))
    bystander_bytes = backend.raw("bystander")
    make, reason = CORRUPT[case]
    bad = make(player)
    backend.put_raw(player, bad)

    with pytest.raises(CorruptAdapterError) as info:
        store.load(SPEC, player)
    msg = str(info.value)
    assert reason in msg and repr(player) in msg and backend.where(player) in msg
    assert backend.raw(player) is None and not store.exists(ARCH, player)
    [(moved, note)] = backend.quarantined()
    assert moved == bad
    assert reason in note and repr(player) in note and player_key(player) in note
    assert store.load(SPEC, player) is None
    assert backend.raw("bystander") == bystander_bytes
    assert store.load(SPEC, "bystander") is not None
    assert list(store.players(ARCH)) == ["bystander"]


def test_quarantined_file_keeps_its_player_key_in_its_name(store: AdapterStore) -> None:
    path = store.path_for(ARCH, "m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"junk")
    with pytest.raises(CorruptAdapterError, match=str(path)):
        store.load(SPEC, "m")
    [moved] = store.quarantined(ARCH)
    assert moved.name.startswith(player_key("m") + ".") and not path.exists()


def test_directory_in_place_of_file_is_quarantined(store: AdapterStore) -> None:
    path = store.path_for(ARCH, "dirplayer")
    path.mkdir(parents=True)
    with pytest.raises(CorruptAdapterError, match="unreadable"):
        store.load(SPEC, "dirplayer")
    assert store.load(SPEC, "dirplayer") is None


def test_base_hash_mismatch_keeps_the_adapter(backend) -> None:
    store = backend.store
    store.save(tensors_for(40), meta_for("stale"))
    data = backend.raw("stale")
    newer = AdapterSpec(ARCH, "base-bbbb", 8, SHAPES)
    with pytest.raises(AdapterMismatchError) as info:
        store.load(newer, "stale")
    assert "'stale'" in str(info.value) and "base-aaaa" in str(info.value)
    assert "base-bbbb" in str(info.value)
    assert backend.raw("stale") == data and backend.quarantined() == []
    assert store.load(SPEC, "stale") is not None


def test_read_meta_reads_only_the_header(backend) -> None:
    store = backend.store
    assert store.read_meta(ARCH, "nobody") is None
    meta = meta_for("hdr", version=7)
    store.save(tensors_for(50), meta)
    data = backend.raw("hdr")
    backend.put_raw("hdr", data[: 8 + _header_len(data)])  # tensor bytes gone, header intact
    if isinstance(backend, RedisBackend):
        backend.client.hset(backend.where("hdr"), "version", "7")
    assert store.read_meta(ARCH, "hdr") == meta
    backend.put_raw("hdr", data[:20])  # header cut
    with pytest.raises(CorruptAdapterError, match="does not fit"):
        store.read_meta(ARCH, "hdr")
    assert store.read_meta(ARCH, "hdr") is None and len(backend.quarantined()) == 1


# -- listing, deletion, cleanup, threads --------------------------------------------------


def test_players_skips_unreadable_and_misplaced(backend, caplog: pytest.LogCaptureFixture) -> None:
    store = backend.store
    store.save(tensors_for(60), meta_for("good"))
    backend.put_raw("junk", b"\x00" * 40)
    backend.put_raw("elsewhere", backend.raw("good"))
    with caplog.at_level(logging.WARNING):
        assert list(store.players(ARCH)) == ["good"]
    assert backend.where("junk") in caplog.text and backend.where("elsewhere") in caplog.text


def test_delete(backend) -> None:
    store = backend.store
    store.save(tensors_for(70), meta_for("../gone"))
    store.save(tensors_for(71), meta_for("stays"))
    assert store.delete(ARCH, "../gone") is True
    assert store.delete(ARCH, "../gone") is False
    assert store.load(SPEC, "../gone") is None
    assert list(store.players(ARCH)) == ["stays"]


def test_stale_temp_files_removed_at_open(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    path = store.save(tensors_for(80), meta_for("t"))
    key = path.stem
    dead = path.with_name(f".{key}.999999999.abcd.tmp")
    junk = path.with_name("junk.tmp")
    mine = path.with_name(f".{key}.{os.getpid()}.ef01.tmp")  # a live writer in this process
    for p in (dead, junk, mine):
        p.write_bytes(b"partial")
    reopened = AdapterStore(tmp_path)
    assert not dead.exists() and not junk.exists() and mine.exists()
    assert reopened.load(SPEC, "t") is not None


def test_concurrent_saves_and_loads(store: AdapterStore) -> None:
    shared_versions = {v: tensors_for(200 + v) for v in range(1, 41)}
    errors: list[BaseException] = []

    def worker(me: str, versions: range) -> None:
        try:
            for v in versions:
                store.save(tensors_for(v), meta_for(me, version=v))
                store.save(shared_versions[v], meta_for("shared", version=v))
                got, meta = store.load(SPEC, me)
                assert meta.version == v
                assert_same(got, tensors_for(v))
                got, meta = store.load(SPEC, "shared")
                assert_same(got, shared_versions[meta.version])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{i}", range(1 + 20 * i, 21 + 20 * i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.quarantined(ARCH) == [] and temp_files(store.root) == []
    assert sorted(store.players(ARCH)) == ["shared", "t0", "t1"]


def test_bench_runs_small() -> None:
    from npcadapt.bench.store import run

    out = run(n_players=20)
    json.dumps(out)
    assert out["n_players"] == 20 and out["saves_per_s"] > 0 and out["loads_per_s"] > 0
    assert 0 < out["cold_load_ms_p50"] <= out["cold_load_ms_p99"]
