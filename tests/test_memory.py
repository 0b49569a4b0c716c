from hwai import memory
from hwai.graph import Graph, Node


def node(name, op, inputs, in_bytes, out_bytes, macs=0, weight_bytes=0, **kw) -> Node:
    return Node(name, op, op, (1,), "float32", weight_bytes // 4, macs, weight_bytes, in_bytes, out_bytes,
                list(inputs), **kw)


def residual_graph() -> Graph:
    """input(100 B) -> a -> b -> c -> add(c, a) -> fc: the skip keeps `a` alive across b and c."""
    return Graph([node("a", "conv", [], 100, 400), node("b", "conv", ["a"], 400, 400),
                  node("c", "conv", ["b"], 400, 400), node("add", "add", ["c", "a"], 800, 400),
                  node("flat", "reshape", ["add"], 0, 0), node("fc", "linear", ["flat"], 400, 40)], "fx", (1, 25))


def test_timeline_on_hand_built_residual_graph():
    g = residual_graph()
    # step: a: in 100 + a 400; b: a + b; c: a + b + c; add: a + c + add; flat aliases add; fc: add + fc
    assert memory.timeline(g) == [("a", 500), ("b", 800), ("c", 1200), ("add", 1200), ("flat", 400), ("fc", 440)]
    assert memory.peak_bytes(g) == 1200


def test_fused_members_write_in_place():
    g = Graph([node("conv", "conv", [], 100, 400, fusion="conv+batchnorm"),
               node("bn", "batchnorm", ["conv"], 400, 400, fused_into="conv"),
               node("fc", "linear", ["bn"], 400, 40)], "fx", (1, 25))
    assert memory.timeline(g, fused=True) == [("conv", 500), ("bn", 400), ("fc", 440)]
    assert memory.peak_bytes(g, fused=False) == 800


def test_best_order_runs_a_branch_to_completion_first():
    # s -> a1 (big) -> a2 (small);  s -> b1 (big) -> b2 (small);  join(a2, b2)
    g = Graph([node("s", "conv", [], 10, 100), node("a1", "conv", ["s"], 100, 500), node("b1", "conv", ["s"], 100, 500),
               node("a2", "conv", ["a1"], 500, 10), node("b2", "conv", ["b1"], 500, 10),
               node("join", "add", ["a2", "b2"], 20, 10)], "fx", (1, 1))
    assert memory.peak_bytes(g) == 1100  # s + a1 + b1 live together in the captured order
    order = memory.best_order(g)
    assert order == ["s", "a1", "a2", "b1", "b2", "join"]
    assert memory.peak_bytes(g, order) == 610
    assert memory.best_order(residual_graph()) == [n.name for n in residual_graph().nodes]
