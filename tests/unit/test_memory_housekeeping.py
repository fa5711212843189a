"""bgpd.ops.memory and the compact() methods it calls: after a large withdrawal the
tables are rebuilt at their size, caches dropped, nothing else changes."""

from __future__ import annotations

import asyncio
import sys

from bgpd.ops.memory import Housekeeper, rss_bytes
from rib import PeerKind, PeerPolicy, PeerRef, Pool, Rib, RibConfig
from rib.path import Path, Withdraw

PEER = PeerRef("10.1.0.3", 65001, "10.1.0.3", PeerKind.EBGP)
OTHER = PeerRef("10.1.0.4", 65002, "10.1.0.4", PeerKind.EBGP)
CONFIG = RibConfig(local_asn=64512, router_id="10.1.0.1", cluster_id="1.0.0.1",
                   node_addresses=frozenset({"10.1.0.1"}), own_blocks=(),
                   pools=(Pool("10.240.0.0/12"),))


def hosts(n: int) -> list[str]:
    return [f"10.{240 + i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(n)]


def test_rib_compact_gives_back_a_floods_tables_and_keeps_the_content() -> None:
    rib = Rib(CONFIG)
    for peer in (PEER, OTHER):
        rib.peer_up(PeerPolicy(key=peer.address, peer=peer))
    rib.update(PEER.address, [Path("10.241.0.0/24", PEER.address, PEER, as_path=(65001,))], [])
    flood = hosts(50_000)
    rib.update(PEER.address, [Path(p, PEER.address, PEER, as_path=(65001,)) for p in flood], [])
    rib.update(PEER.address, [], [Withdraw(p, PEER) for p in flood])
    before = (rib.loc_rib(), rib.adj_rib_in(PEER.address), rib.adj_rib_out(OTHER.address))
    peer_state = rib._peers[PEER.address]
    sizes = (sys.getsizeof(rib._dest), sys.getsizeof(peer_state.adj_in),
             len(rib._ectx._passable))
    rib.compact()
    after = (rib.loc_rib(), rib.adj_rib_in(PEER.address), rib.adj_rib_out(OTHER.address))
    assert after == before and len(after[0]) == 1
    assert sys.getsizeof(rib._dest) < sizes[0] / 100
    assert sys.getsizeof(rib._peers[PEER.address].adj_in) < sizes[1] / 100
    assert sizes[2] >= 50_000 and len(rib._ectx._passable) == 0
    # Still a working RIB.
    ch = rib.update(PEER.address, [Path("10.242.0.0/24", PEER.address, PEER,
                                        as_path=(65001,))], [])
    assert [k.prefix for k in ch.kernel_add] == ["10.242.0.0/24"]


async def _drive(hk: Housekeeper) -> None:
    task = asyncio.create_task(hk.run())
    for _ in range(400):
        await asyncio.sleep(0.002)
        if task.done():
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_housekeeper_compacts_once_after_a_large_stable_drop() -> None:
    sizes = iter([0, 30_000, 80_000, 80_000, 30_000, 20_000, 20_000, 20_000, 25_000])
    calls: list[str] = []

    async def speaker_compact() -> None:
        calls.append("speaker")

    hk = Housekeeper(lambda: next(sizes), [lambda: calls.append("rib"), speaker_compact],
                     interval=0.001, min_drop=10_000)
    await _drive(hk)
    # 80k peak, down to 20k and unchanged for one sample: compact, exactly once.
    assert calls == ["rib", "speaker"] and hk.compactions == 1
    assert hk.peak == 20_000 or hk.peak == 25_000


def test_no_compaction_for_small_or_ongoing_drops() -> None:
    hk = Housekeeper(lambda: 0, [], min_drop=10_000)
    hk.peak = 15_000
    assert not hk.due(9_000, 9_000)  # dropped 6,000: not enough
    hk.peak = 100_000
    assert not hk.due(60_000, 60_000)  # above half the peak
    assert not hk.due(40_000, 45_000)  # still moving
    assert hk.due(40_000, 40_000)
    assert rss_bytes() > 0


async def test_heap_trimmed_once_per_settled_growth(monkeypatch) -> None:
    # issue 17: a flood's transient objects leave freed C-heap pages resident; once the
    # count stops moving (two equal samples) the heap is trimmed, once per growth of
    # min_drop or more, never while routes are still arriving, never for small growth.
    import bgpd.ops.memory as memory

    trims: list[int] = []
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(1) or True)
    seq = [0, 5_000, 30_000, 60_000, 60_000, 60_000, 60_000, 60_000,  # settled: trim
           65_000, 65_000, 65_000,  # +5k only: no trim
           90_000, 95_000, 95_000, 95_000]  # +35k from the last trim, settled: trim
    sizes = iter(seq)
    hk = Housekeeper(lambda: next(sizes), [], interval=0.001, min_drop=10_000)
    await _drive(hk)
    assert hk.trims == 2 and len(trims) == 2 and hk.compactions == 0
    assert hk.trimmed_at == 95_000


def test_trim_not_due_while_the_count_moves() -> None:
    hk = Housekeeper(lambda: 0, [], min_drop=10_000)
    assert not hk.trim_due(50_000, 40_000)
    assert not hk.trim_due(50_000, 50_000)  # one unchanged sample: not yet
    assert hk.trim_due(50_000, 50_000)
    hk.trimmed_at = 45_000
    assert not hk.trim_due(50_000, 50_000)  # grown 5,000 since: not enough


async def test_heap_trimmed_once_after_start_up(monkeypatch) -> None:
    # Start-up (imports, the first config load) leaves freed heap: one trim once the
    # count has settled, even with no routes, and none after that while nothing grows.
    import bgpd.ops.memory as memory

    trims: list[int] = []
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(1) or True)
    sizes = iter([0] * 12)
    hk = Housekeeper(lambda: next(sizes), [], interval=0.001, min_drop=10_000)
    await _drive(hk)
    assert len(trims) == 1 and hk.trims == 1 and hk.compactions == 0


# Six threads allocating at once, then glibc's own report (malloc_info: one <heap> per
# arena); then a 4 MiB block freed (glibc's dynamic mmap threshold rises to it) and a
# 1 MiB block: on the brk heap with glibc's defaults, mmap'ed with the fixed threshold.
ARENAS = """
import ctypes, sys, threading
from bgpd.ops.memory import tune_malloc
print(tune_malloc({} if sys.argv[1] == "tuned" else {"PODBGP_MALLOC_DEFAULTS": "1"}))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]; libc.open_memstream.restype = ctypes.c_void_p
barrier = threading.Barrier(7)
def work():
    blocks = [ctypes.create_string_buffer(4096) for _ in range(50)]
    barrier.wait(); barrier.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
barrier.wait()
ptr, size = ctypes.c_char_p(), ctypes.c_size_t()
fp = libc.open_memstream(ctypes.byref(ptr), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(fp)); libc.fclose(ctypes.c_void_p(fp))
arenas = ptr.value.decode().count("<heap nr=")
barrier.wait()
for t in threads: t.join()
big = libc.malloc(4 << 20); libc.free(big)
mid = libc.malloc(1 << 20)
heap = [tuple(int(x, 16) for x in line.split()[0].split("-"))
        for line in open("/proc/self/maps") if "[heap]" in line]
print(arenas, any(lo <= mid < hi for lo, hi in heap))
"""


def test_tune_malloc_caps_arenas_and_keeps_big_blocks_off_the_heap() -> None:
    """bgpd's mallopt settings (issue 17): threads share two arenas (glibc's default gave
    each of six threads its own here), and a 1 MiB block is mmap'ed even after a larger
    block was freed (glibc's dynamic threshold would put it on the heap, where freed
    room fragments); PODBGP_MALLOC_DEFAULTS=1 keeps glibc's behaviour."""
    import subprocess

    runs = {mode: subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True,
                                 text=True, timeout=60, check=True).stdout.split("\n")
            for mode in ("tuned", "default")}
    from bgpd.ops.memory import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    assert runs["tuned"][0] == str([M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD])
    assert runs["tuned"][1] == "2 False"
    assert runs["default"][0] == "[]"
    arenas, on_heap = runs["default"][1].split()
    assert int(arenas) > 2 and on_heap == "True"


def test_tune_malloc_leaves_what_the_environment_sets() -> None:
    """glibc applies MALLOC_*_ variables and GLIBC_TUNABLES itself at exec: bgpd does not
    override them, setting only the others."""
    from bgpd.ops.memory import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, tune_malloc

    assert tune_malloc({"MALLOC_ARENA_MAX": "4"}) == [M_MMAP_THRESHOLD, M_TRIM_THRESHOLD]
    assert tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) == [
        M_ARENA_MAX, M_TRIM_THRESHOLD]
    assert tune_malloc({"PODBGP_MALLOC_DEFAULTS": "1"}) == []


def test_bgpd_main_tunes_malloc_before_anything_else(monkeypatch) -> None:
    """bgpd.main.main applies the settings first, before options (and any thread)."""
    import bgpd.main

    calls = []
    monkeypatch.setattr(bgpd.main, "tune_malloc", lambda: calls.append("tuned"))
    monkeypatch.setattr(bgpd.main, "parse_options",
                        lambda argv: calls.append("options") or (_ for _ in ()).throw(
                            bgpd.main.UsageError("stop")))
    assert bgpd.main.main(["--x"]) == 2
    assert calls == ["tuned", "options"]
async def test_heap_trimmed_under_churn_while_it_holds_free_pages(monkeypatch) -> None:
    # issue 16's soak: a reflector whose route count swings (a peer flapping 1,000
    # routes every second, clients resetting in turn) never sees a large drop nor a
    # settled growth, yet its C heap filled with free pages (+7.9 MiB RSS in 600 s,
    # BIRD 2 +0.0). Every churn_every seconds the heap is trimmed if it holds
    # churn_free bytes free or more; the free room is only asked for then.
    import bgpd.ops.memory as memory

    for free, want in ((3 << 20, 59 // 5), (1 << 20, 0)):
        trims: list[int] = []
        asked: list[int] = []
        monkeypatch.setattr(memory, "trim_heap", lambda t=trims: t.append(1) or True)
        monkeypatch.setattr(memory, "heap_free_bytes", lambda f=free, a=asked: a.append(1) or f)
        sizes = iter([100, 1_100] * 30)  # 60 calls: the first one and 59 samples
        hk = Housekeeper(lambda s=sizes: next(s), [], interval=0.001, min_drop=10_000,
                         churn_every=0.005, churn_free=2 << 20)
        await _drive(hk)
        assert len(trims) == hk.trims == want and hk.compactions == 0
        assert len(asked) == 59 // 5


def test_a_session_that_goes_is_freed_at_once_with_its_tables() -> None:
    # issue 16's soak (100 reflector clients resetting in turn): the RIB's per-session
    # state referred to itself (and an ADD-PATH stream to its session and back), so
    # each peer_down left the session's Adj-RIBs to the cyclic collector — which
    # bgpd's thresholds (bgpd.main.tune_gc) keep from running under steady churn:
    # bgpd grew ~0.6 MiB a minute, a full collection found every reset session.
    import gc

    from rib.table import _Peer

    def sessions() -> int:  # alive, whether reachable or cyclic garbage
        return sum(type(o) is _Peer for o in gc.get_objects())

    gc.collect()
    rib = Rib(CONFIG)
    for peer in (PEER, OTHER):
        rib.peer_up(PeerPolicy(key=peer.address, peer=peer))
    rib.update(OTHER.address, [Path("10.241.1.0/24", OTHER.address, OTHER,
                                    as_path=(65002,))], [])
    rib.update(PEER.address, [Path("10.241.0.0/24", PEER.address, PEER, as_path=(65001,)),
                              Path("10.241.2.0/24", PEER.address, PEER, as_path=(65001,),
                                   path_id=7)], [])
    session = rib._peers[PEER.address]
    assert session.adj_out and 7 in session.streams  # what it held: both kinds of table
    assert session.streams[7].acct is session and session.acct is session
    del session
    gc.disable()
    try:
        before = sessions()
        rib.peer_down(PEER.address)
        assert before - sessions() == 2  # the session and its stream, without a collection
    finally:
        gc.enable()
    assert rib.loc_rib().keys() == {"10.241.1.0/24"}


async def test_cyclic_garbage_collected_under_churn_without_a_threshold_collection() -> None:
    # issue 16's soak: bgpd's collector thresholds (bgpd.main.tune_gc) count
    # allocations less deallocations, which steady churn keeps level: no collection
    # ran in 10 minutes, and cyclic garbage (an HTTP scrape's transport, a reset
    # session's state before it was fixed) stayed. The housekeeper's churn tick
    # collects the young generations.
    import gc
    import weakref

    class Node:
        pass

    def cycle() -> weakref.ref:
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    gc.disable()
    try:
        sizes = iter([100] * 12)
        quiet = Housekeeper(lambda: next(sizes), [], interval=0.001, churn_every=1.0)
        garbage = cycle()
        await _drive(quiet)
        assert garbage() is not None  # no tick yet: nothing collected it
        sizes = iter([100] * 12)
        hk = Housekeeper(lambda: next(sizes), [], interval=0.001, churn_every=0.005)
        await _drive(hk)
        assert garbage() is None
    finally:
        gc.enable()
