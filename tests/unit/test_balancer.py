"""router.dataplane.balancer: exact pick sequences of smooth WRR and least-in-flight."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.dataplane.balancer import LeastInFlight, SmoothWeightedRoundRobin


class Item:
    """A weighted, loaded thing with identity semantics (hashable, for ``exclude`` sets)."""

    __slots__ = ("name", "weight", "inflight")

    def __init__(self, name: str, weight: int = 1, inflight: int = 0) -> None:
        self.name = name
        self.weight = weight
        self.inflight = inflight

    def __repr__(self) -> str:
        return f"Item({self.name!r}, weight={self.weight}, inflight={self.inflight})"


def items(**weights: int) -> list[Item]:
    return [Item(name, w) for name, w in weights.items()]


def swrr_sequence(wrr: SmoothWeightedRoundRobin[Item], n: int, exclude: object = None) -> str:
    out = []
    for _ in range(n):
        item = wrr.pick(exclude)
        out.append("-" if item is None else item.name)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# SmoothWeightedRoundRobin
# --------------------------------------------------------------------------------------------


def test_swrr_1_3_is_b_a_b_b_repeated() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=1, b=3))
    assert swrr_sequence(wrr, 12) == "babb" * 3


def test_swrr_5_1_1_is_nginx_documented_sequence() -> None:
    # ngx_http_upstream_round_robin.c: weights 5, 1, 1 give "a a b a c a a".
    wrr = SmoothWeightedRoundRobin(items(a=5, b=1, c=1))
    assert swrr_sequence(wrr, 14) == "aabacaa" * 2


def test_swrr_11_3() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=11, b=3))
    seq = swrr_sequence(wrr, 28)
    assert seq == "aabaaaabaaabaa" * 2
    assert seq[:14].count("a") == 11
    assert seq[:14].count("b") == 3


def test_swrr_equal_weights_alternate() -> None:
    assert swrr_sequence(SmoothWeightedRoundRobin(items(a=1, b=1)), 6) == "ababab"
    assert swrr_sequence(SmoothWeightedRoundRobin(items(a=100, b=100)), 6) == "ababab"


def test_swrr_weight_zero_item_is_never_picked() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=2, b=0))
    assert len(wrr) == 1
    assert swrr_sequence(wrr, 10) == "a" * 10


def test_swrr_zero_weight_in_the_middle_keeps_the_others_sequence() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=1, z=0, b=3))
    assert swrr_sequence(wrr, 8) == "babb" * 2


def test_swrr_single_item() -> None:
    only = Item("a", 7)
    other = Item("x", 1)
    wrr = SmoothWeightedRoundRobin([only])
    assert len(wrr) == 1
    assert [wrr.pick() for _ in range(3)] == [only, only, only]
    assert wrr.pick(exclude={other}) is only
    assert wrr.pick(exclude={only}) is None
    assert wrr.pick() is only


def test_swrr_no_items() -> None:
    wrr: SmoothWeightedRoundRobin[Item] = SmoothWeightedRoundRobin([])
    assert len(wrr) == 0
    assert wrr.pick() is None
    assert wrr.pick(exclude=set()) is None


def test_swrr_only_zero_weights_is_like_no_items() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=0, b=0))
    assert len(wrr) == 0
    assert wrr.pick() is None


def test_swrr_exclude_skips_excluded_items() -> None:
    a, b, c = items(a=5, b=1, c=1)
    wrr = SmoothWeightedRoundRobin([a, b, c])
    # With a excluded, the sequence is the smooth WRR of b:c (1:1) alone.
    assert swrr_sequence(wrr, 4, exclude={a}) == "bcbc"
    assert swrr_sequence(SmoothWeightedRoundRobin([a, b, c]), 3, exclude=[b, c]) == "aaa"


def test_swrr_exclude_first_pick_gives_the_runner_up() -> None:
    a, b = items(a=1, b=3)
    wrr = SmoothWeightedRoundRobin([a, b])
    assert wrr.pick() is b
    # Retrying the same request without b: the only other candidate.
    assert wrr.pick(exclude=(b,)) is a


def test_swrr_all_excluded_returns_none_and_leaves_the_sequence_alone() -> None:
    a, b = items(a=1, b=3)
    wrr = SmoothWeightedRoundRobin([a, b])
    seq = [wrr.pick(), wrr.pick()]
    assert wrr.pick(exclude={a, b}) is None
    seq += [wrr.pick(), wrr.pick(), wrr.pick(), wrr.pick()]
    assert "".join(i.name for i in seq if i is not None) == "babbba"


def test_swrr_exclude_of_a_foreign_item_changes_nothing() -> None:
    wrr = SmoothWeightedRoundRobin(items(a=1, b=3))
    assert swrr_sequence(wrr, 8, exclude={Item("x")}) == "babb" * 2


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6)
       .filter(lambda ws: sum(ws) > 0))
def test_swrr_every_window_of_total_picks_has_each_item_weight_times(weights: list[int]) -> None:
    pool = [Item(f"i{k}", w) for k, w in enumerate(weights)]
    wrr = SmoothWeightedRoundRobin(pool)
    total = sum(weights)
    picks = [wrr.pick() for _ in range(3 * total)]
    for start in range(len(picks) - total + 1):
        window = picks[start:start + total]
        for item in pool:
            assert sum(1 for p in window if p is item) == item.weight, (start, item)


# --------------------------------------------------------------------------------------------
# LeastInFlight
# --------------------------------------------------------------------------------------------


def lif_indices(pool: list[Item], lif: LeastInFlight[Item], n: int,
                exclude: object = None) -> list[int | None]:
    out: list[int | None] = []
    for _ in range(n):
        item = lif.pick(exclude)
        out.append(None if item is None else pool.index(item))
    return out


def test_lif_all_idle_is_round_robin() -> None:
    pool = [Item("a"), Item("b"), Item("c")]
    lif = LeastInFlight(pool)
    assert len(lif) == 3
    assert lif_indices(pool, lif, 6) == [0, 1, 2, 0, 1, 2]


def test_lif_fewest_inflight_wins() -> None:
    pool = [Item("a", inflight=3), Item("b", inflight=1), Item("c", inflight=2)]
    lif = LeastInFlight(pool)
    assert lif_indices(pool, lif, 4) == [1, 1, 1, 1]


def test_lif_ties_at_zero_go_round_robin() -> None:
    pool = [Item("a", inflight=1), Item("b"), Item("c")]
    lif = LeastInFlight(pool)
    assert lif_indices(pool, lif, 4) == [1, 2, 1, 2]


def test_lif_ties_above_zero_go_round_robin() -> None:
    pool = [Item("a", inflight=2), Item("b", inflight=2), Item("c", inflight=5)]
    lif = LeastInFlight(pool)
    assert lif_indices(pool, lif, 4) == [0, 1, 0, 1]


def test_lif_follows_changing_load() -> None:
    pool = [Item("a"), Item("b"), Item("c")]
    lif = LeastInFlight(pool)
    picked = []
    for _ in range(6):  # each pick starts a request that does not finish
        item = lif.pick()
        assert item is not None
        item.inflight += 1
        picked.append(pool.index(item))
    assert picked == [0, 1, 2, 0, 1, 2]
    pool[1].inflight = 0  # b's requests finish
    assert lif.pick() is pool[1]


def test_lif_exclude() -> None:
    pool = [Item("a"), Item("b"), Item("c")]
    lif = LeastInFlight(pool)
    assert lif.pick(exclude={pool[0]}) is pool[1]
    assert lif.pick(exclude=[pool[2]]) is pool[0]
    assert lif.pick(exclude=set(pool)) is None


def test_lif_exclude_skips_the_least_loaded() -> None:
    pool = [Item("a", inflight=4), Item("b"), Item("c", inflight=2)]
    lif = LeastInFlight(pool)
    assert lif.pick(exclude={pool[1]}) is pool[2]


def test_lif_empty() -> None:
    lif: LeastInFlight[Item] = LeastInFlight([])
    assert len(lif) == 0
    assert lif.pick() is None
    assert lif.pick(exclude=set()) is None
