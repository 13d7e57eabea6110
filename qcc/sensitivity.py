"""Layer sensitivity to quantization (seed 002: Layer Analysis, Network Space Exploration): the sweep
engine behind the `annotate-sensitivity` pass, and `table(graph)`, the reader of its results.

A configuration quantizes ONE variable (the weights or the input activation) of one layer, or of a
group of layers, with one scheme at one bit-width, and leaves everything else float. Its ENTRY is
(seed 002 eq. 1, averaged per image over the calibration set):

    output_l2 = mean_i  sum_outputs ||y_float(i) - y_quant(i)||_F
    layers_l2 = {downstream layer L: mean_i ||L_float(i) - L_quant(i)||_F}
    top1, top5 = task accuracy of the quantized model on the labels (None without labels)

How a configuration is run (the "naive" way, kept for tests and the benchmark): clone the reference
graph, quantize the variable through the Graph API exactly as the `quantize` pass would (weights:
`quantize_weights` on the data, per output channel by default; activations: an Identity carrying
`activation_spec(calibration statistics)` in front of the layer only), and run the whole calibration
set through `qcc.interp.run(mode="fake")`.

How it is run fast (the default): the float run of the calibration set is done once and every value
kept (`keep_all=True`, in batches). A configuration changes only the nodes downstream of the
quantized variable (the networkx descendants of the changed nodes), so only those are evaluated,
reading cached float arrays for every other value. Both ways evaluate the same nodes with the same
semantics on the same arrays in the same batches, and per-image distances are summed exactly
(`math.fsum` over float64 norms), so the two give bit-identical entries.

The reference is the float model: the graph in fake-quant mode with its activation quantizers
removed (threshold activations and crops are part of the function and stay; constants keep their
data). Configurations run inline, on a process pool (the sweep state is shipped once per worker by
the pool's initializer), or on a Dask cluster (scattered once to every worker); results come back in
configuration order, so every executor writes the same table.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from threadpoolctl import threadpool_limits

from qcc.calibration import calibration_of
from qcc.errors import QccError
from qcc.interp import FakeQuantSemantics, run
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import QuantSpec, Thresholds
from qcc.quantizers import activation_spec, quantize_weights

__all__ = [
    "LAYER_OPS",
    "VARIABLES",
    "Config",
    "WeightFit",
    "Sweep",
    "SweepError",
    "layer_variables",
    "input_quantizer",
    "entries_by_key",
    "run_sweep",
    "table",
    "group_table",
    "sensitivity_of",
]

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # the same as qcc.passes.quantize.LAYER_OPS (core never imports passes)
VARIABLES = ("weights", "activations")
TOPK = (1, 5)

Entry = dict[str, Any]
Progress = Callable[[int], None]


class SweepError(QccError):
    """A configuration could not be quantized (names the layer)."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node_name = node


@dataclass(frozen=True)
class Config:
    """Quantize `variable` ("weights" or "activations") of `layers` with `scheme` at `bits`.

    `group` is the group's name ("a+b") in group mode, None for a single layer.
    """

    layers: tuple[str, ...]
    variable: str
    scheme: str
    bits: int
    group: str | None = None

    @property
    def key(self) -> str:
        return self.group if self.group is not None else self.layers[0]


@dataclass(frozen=True)
class WeightFit:
    """How weights are fitted (the `quantize` pass's options of the same names)."""

    per_channel: bool = True
    centroid_bits: int = 8
    seed: int = 0


def layer_variables(node: Node) -> tuple[str, ...]:
    """The variables of a layer that can be quantized: constant weights, non-constant input."""
    out = []
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].is_constant:
        out.append("weights")
    if node.inputs and node.inputs[0] is not None and not node.inputs[0].is_constant:
        out.append("activations")
    return tuple(out)


def input_quantizer(graph: Graph, node: Node, scheme: str, bits: int) -> QuantSpec:
    """The quantizer of a layer's input from its calibration statistics (SweepError if missing)."""
    x = node.inputs[0]
    stats = calibration_of(graph, x)
    if stats is None:
        raise SweepError(f"input '{x.name}' has no calibration statistics; run 'calibrate' first "
                         "(e.g. -p \"calibrate,annotate-sensitivity\" --calib CALIB.npz)", node.name)
    try:
        return activation_spec(stats, scheme, bits)
    except QccError as e:
        raise SweepError(f"{scheme} {bits}-bit activations: {e}", node.name) from None


def _output_axis(node: Node) -> int:
    """The weight axis that indexes output channels (as qcc.passes.quantize.output_axis)."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB") else 1
    return node.inputs[1].type.rank - 1


# ------------------------------------------------------------------------------ the sweep state
class Sweep:
    """The float reference of a calibration set, cached per batch, and the evaluation of configurations.

    graph: a calibrated graph (activation configurations read the `calibrate` statistics).
    inputs: calibration arrays keyed by graph input name, samples along axis 0.
    batches: [start, stop) sample ranges; both evaluation ways run exactly these batches.
    labels: integer labels [samples] for top-1 / top-5 on the first output ([N, classes]), or None.
    """

    def __init__(self, graph: Graph, inputs: Mapping[str, np.ndarray], batches: Sequence[tuple[int, int]], *,
                 labels: np.ndarray | None = None, fit: WeightFit = WeightFit(),
                 progress: Progress | None = None):
        self.graph = _reference_graph(graph)
        self.batches = [(int(a), int(b)) for a, b in batches]
        self.fit = fit
        self.samples = sum(b - a for a, b in self.batches)
        self.labels = _check_labels(self.graph, labels, self.batches)
        self.cache = []
        constants = {c.name for c in self.graph.constants}
        for start, stop in self.batches:
            batch = {name: np.asarray(a)[start:stop] for name, a in inputs.items()}
            values = run(self.graph, batch, mode="fake", keep_all=True)
            self.cache.append({k: v for k, v in values.items() if k not in constants})
            if progress is not None:
                progress(1)

    # -------------------------------------------------------------- configurations
    def layers(self) -> list[Node]:
        return [n for n in self.graph.nodes if n.op in LAYER_OPS]

    def configured(self, config: Config) -> tuple[Graph, list[Node]]:
        """A clone of the reference graph with `config` applied, and the nodes that changed."""
        g = self.graph.clone()
        changed = []
        for name in config.layers:
            node = g.node(name)
            if config.variable == "weights":
                changed.append(self._quantize_weights(g, node, config))
            else:
                changed.append(self._quantize_input(g, node, config))
        return g, changed

    def _quantize_weights(self, g: Graph, node: Node, config: Config) -> Node:
        w = node.inputs[1]
        axis = _output_axis(node) if self.fit.per_channel else None
        try:
            spec, data = quantize_weights(w.data, config.scheme, config.bits, axis=axis,
                                          centroid_bits=self.fit.centroid_bits, seed=self.fit.seed)
        except QccError as e:
            raise SweepError(f"{config.scheme} {config.bits}-bit weights: {e}", node.name) from None
        g.replace_constant_input(node, 1, data, spec)
        return node

    def _quantize_input(self, g: Graph, node: Node, config: Config) -> Node:
        spec = input_quantizer(g, node, config.scheme, config.bits)
        ident = g.add_node("Identity", [node.inputs[0]], name=g.fresh_node_name(f"{node.name}.sensitivity"))
        ident.output.quant = spec
        g.set_input(node, 0, ident.output)
        return ident

    # -------------------------------------------------------------- evaluation
    def evaluate(self, config: Config, *, naive: bool = False) -> Entry:
        """The ENTRY of one configuration (cached downstream re-evaluation, or a full re-run if naive)."""
        g, changed = self.configured(config)
        downstream = _downstream(g, changed)
        layer_outputs = {n.name: n.outputs[0].name for n in downstream if n.op in LAYER_OPS}
        tally = _Tally(list(layer_outputs), [v.name for v in g.outputs], self.labels is not None)
        sem = FakeQuantSemantics()
        for b, cached in enumerate(self.cache):
            if naive:
                values = run(g, {v.name: cached[v.name] for v in g.inputs}, mode="fake", keep_all=True)
            else:
                values = _ChainMap(_evaluate_nodes(g, downstream, cached, sem), cached)
            tally.add(values, cached, layer_outputs, self._batch_labels(b))
        return tally.entry(self.samples)

    def float_accuracy(self) -> dict[str, float | None]:
        """top1 / top5 of the float reference (None without labels)."""
        if self.labels is None:
            return {"top1": None, "top5": None}
        out = self.graph.outputs[0].name
        hits = [0] * len(TOPK)
        for b, cached in enumerate(self.cache):
            for i, k in enumerate(TOPK):
                hits[i] += _hits(cached[out], self._batch_labels(b), k)
        return {f"top{k}": h / self.samples for k, h in zip(TOPK, hits)}

    def _batch_labels(self, b: int) -> np.ndarray | None:
        if self.labels is None:
            return None
        start, stop = self.batches[b]
        return self.labels[start:stop]


def _reference_graph(graph: Graph) -> Graph:
    """A clone whose activation quantizers are removed: the float model (thresholds and crops stay)."""
    g = graph.clone()
    for v in g.values():
        if not v.is_constant and v.quant is not None and not isinstance(v.quant, Thresholds):
            v.quant = None
    return g


def _check_labels(graph: Graph, labels: np.ndarray | None, batches: list[tuple[int, int]]) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    count = max((b for _, b in batches), default=0)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise QccError(f"labels must be integers [samples], got {labels.dtype} {list(labels.shape)}")
    if len(labels) < count:
        raise QccError(f"{len(labels)} labels for {count} calibration samples")
    out = graph.outputs[0]
    if out.type.rank != 2:
        raise QccError(f"labels need the first output '{out.name}' to be [samples, classes] scores, "
                       f"it is {out.type}")
    return labels[:count]


def _downstream(g: Graph, changed: list[Node]) -> list[Node]:
    """The changed nodes and all their descendants, in the graph's topological order."""
    index = g.index()
    affected = set(changed)
    for node in changed:
        affected |= nx.descendants(index, node)
    return [n for n in g.nodes if n in affected]


def _evaluate_nodes(g: Graph, nodes: list[Node], cached: Mapping[str, np.ndarray], sem) -> dict[str, np.ndarray]:
    """Evaluate `nodes` (topological) as qcc.interp.run does, reading other values from `cached`."""
    env: dict[str, np.ndarray] = {}

    def read(v: Value | None) -> np.ndarray | None:
        if v is None:
            return None
        if v.name in env:
            return env[v.name]
        if v.is_constant:
            return sem.value(v, v.data)
        return cached[v.name]

    for node in nodes:
        results = sem.evaluate(node, [read(v) for v in node.inputs])
        for out, arr in zip(node.outputs, results):
            env[out.name] = sem.value(out, arr if hasattr(arr, "q") else np.asarray(arr))
    return env


class _ChainMap(Mapping):
    """Recomputed values first, cached float values for the rest."""

    def __init__(self, first: Mapping, second: Mapping):
        self.first, self.second = first, second

    def __getitem__(self, key):
        return self.first[key] if key in self.first else self.second[key]

    def __iter__(self):
        return iter({**self.second, **self.first})

    def __len__(self):
        return len({**self.second, **self.first})


def _image_norms(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """||y_i - ref_i||_F per sample (axis 0), in float64."""
    n = y.shape[0] if y.ndim else 1
    d = np.asarray(y, np.float64).reshape(n, -1) - np.asarray(ref, np.float64).reshape(n, -1)
    return np.sqrt(np.einsum("ij,ij->i", d, d))


def _hits(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many labels are among the k highest scores (ties to the lower class index, as argmax)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")[:, :k]
    return int(np.sum(np.any(order == labels[:, None], axis=1)))


class _Tally:
    """Per-image distances and top-k hits of one configuration, summed exactly at the end."""

    def __init__(self, layers: list[str], outputs: list[str], labels: bool):
        self.layers = {name: [] for name in layers}
        self.outputs = outputs
        self.output_norms: list[float] = []
        self.hits = [0] * len(TOPK) if labels else None

    def add(self, values: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
            layer_outputs: Mapping[str, str], labels: np.ndarray | None) -> None:
        for layer, value in layer_outputs.items():
            self.layers[layer].extend(_image_norms(values[value], reference[value]).tolist())
        per_output = [_image_norms(values[o], reference[o]) for o in self.outputs]
        self.output_norms.extend(np.sum(per_output, axis=0).tolist() if per_output else [])
        if self.hits is not None:
            scores = values[self.outputs[0]]
            self.hits = [h + _hits(scores, labels, k) for h, k in zip(self.hits, TOPK)]

    def entry(self, samples: int) -> Entry:
        acc = {f"top{k}": (h / samples if self.hits is not None else None)
               for k, h in zip(TOPK, self.hits or [0] * len(TOPK))}
        return {"output_l2": math.fsum(self.output_norms) / samples,
                "layers_l2": {name: math.fsum(v) / samples for name, v in self.layers.items()},
                **acc}


# ------------------------------------------------------------------------------ executors
def _evaluate_safely(sweep: Sweep, config: Config, naive: bool) -> tuple[str, Any]:
    """("ok", entry) or ("error", (message, node)): errors travel back as data, not pickled exceptions."""
    try:
        return "ok", sweep.evaluate(config, naive=naive)
    except SweepError as e:
        return "error", (str(e), e.node_name)
    except QccError as e:
        return "error", (str(e), None)


def run_sweep(sweep: Sweep, configs: Sequence[Config], *, workers: int = 1, cluster: str | None = None,
              naive: bool = False, progress: Progress | None = None) -> list[Entry]:
    """Entries of `configs`, in their order: inline (workers=1), on a process pool, or on a Dask cluster.

    cluster: a Dask scheduler address ("tcp://host:8786"), or "local" to start a LocalCluster of
    `workers` processes for this sweep. Ctrl-C cancels what has not started and re-raises.
    """
    if workers < 1:
        raise QccError(f"workers must be at least 1, got {workers}")
    configs = list(configs)
    tick = progress or (lambda n: None)
    if cluster is not None:
        results = _run_dask(sweep, configs, cluster, workers, naive, tick)
    elif workers > 1 and len(configs) > 1:
        results = _run_pool(sweep, configs, min(workers, len(configs)), naive, tick)
    else:
        results = []
        for config in configs:
            results.append(_evaluate_safely(sweep, config, naive))
            tick(1)
    return [_unwrap(r) for r in results]


def _unwrap(result: tuple[str, Any]) -> Entry:
    status, payload = result
    if status == "ok":
        return payload
    message, node = payload
    raise SweepError(message, node)


# process pool: the sweep is shipped once per worker through the initializer
_WORKER_SWEEP: Sweep | None = None


def _init_worker(sweep: Sweep) -> None:
    global _WORKER_SWEEP
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _one_blas_thread()
    _WORKER_SWEEP = sweep


_BLAS_LIMITED = False


def _one_blas_thread() -> None:
    """Workers are the parallelism: a multi-threaded BLAS in each would oversubscribe the cores.

    Every BLAS thread count computes the same numbers (OpenBLAS splits the output, not the sums), which
    the executor-equality test checks.
    """
    global _BLAS_LIMITED
    if not _BLAS_LIMITED:
        threadpool_limits(1, user_api="blas")
        _BLAS_LIMITED = True


def _worker_task(config: Config, naive: bool) -> tuple[str, Any]:
    return _evaluate_safely(_WORKER_SWEEP, config, naive)


def _pool_context():
    """fork on Linux: workers start at once, share the parent's cache copy-on-write, and a user's script
    needs no `if __name__ == "__main__"` guard (the workers only run numpy code, so inheriting the
    parent's other threads' locks is harmless); elsewhere the platform's default."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _run_pool(sweep: Sweep, configs: list[Config], workers: int, naive: bool, tick: Progress) -> list:
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_init_worker,
                               initargs=(sweep,))
    try:
        futures = [pool.submit(_worker_task, c, naive) for c in configs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            tick(len(done))
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# Dask: the sweep is scattered once to every worker; tasks receive it by reference
def _dask_task(sweep: Sweep, config: Config, naive: bool) -> tuple[str, Any]:
    _one_blas_thread()
    return _evaluate_safely(sweep, config, naive)


def _run_dask(sweep: Sweep, configs: list[Config], address: str, workers: int, naive: bool,
              tick: Progress) -> list:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise QccError("a cluster sweep needs dask.distributed: pip install 'qcc[distributed]'") from None
    import logging

    if address == "local":
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
        except RuntimeError as e:
            raise QccError(f"cannot start a local Dask cluster: {e} (a script that starts one needs an "
                           "`if __name__ == \"__main__\":` guard)") from None
        client = Client(cluster)
    else:
        cluster = None
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise QccError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None
    futures = []
    try:
        state = client.scatter(sweep, broadcast=True, hash=False)
        futures = [client.submit(_dask_task, state, c, naive, pure=False) for c in configs]
        for _ in as_completed(futures):
            tick(1)
        return client.gather(futures)
    finally:
        if futures:
            client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------ reading results
def table(graph: Graph) -> dict[str, dict[str, Any]]:
    """{layer name: node.attrs["sensitivity"]} for every annotated layer, in topological order."""
    return {n.name: n.attrs["sensitivity"] for n in graph.nodes if isinstance(n.attrs.get("sensitivity"), dict)}


def group_table(graph: Graph) -> dict[str, dict[str, Any]]:
    """{"a+b": {"weights": ..., "activations": ...}} of group mode, or {}."""
    info = graph.attrs.get("sensitivity")
    return dict(info.get("groups", {})) if isinstance(info, dict) else {}


def sensitivity_of(row: Mapping[str, Any], variable: str, scheme: str, bits: int,
                   metric: str = "output_l2") -> float:
    """One number of a layer's table row; the "float" scheme and 32 bits are 0 by definition."""
    if scheme == "float" or bits >= 32:
        return 0.0
    try:
        return float(row[variable][scheme][str(bits)][metric])
    except KeyError:
        raise QccError(f"no sensitivity for {variable} {scheme} {bits}-bit; annotate-sensitivity swept "
                       f"{_swept(row.get(variable, {}))}") from None


def _swept(part: Mapping[str, Any]) -> str:
    return ", ".join(f"{s} {'/'.join(bits)}" for s, bits in part.items()) or "nothing"


def entries_by_key(configs: Iterable[Config], entries: Iterable[Entry]) -> dict[str, dict[str, Any]]:
    """{layer or group: {variable: {scheme: {bits: ENTRY}}}} from configurations and their entries."""
    out: dict[str, dict[str, Any]] = {}
    for config, entry in zip(configs, entries):
        row = out.setdefault(config.key, {v: {} for v in VARIABLES})
        row[config.variable].setdefault(config.scheme, {})[str(config.bits)] = entry
    return out
