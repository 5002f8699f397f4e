"""Apache TVM (0.27, Relax): ONNX file -> executable for a picojoule target -> shared library, host latency.

A target's YAML ``tvm`` section says how TVM builds for it (``llvm`` with an ``mcpu``, or ``cuda`` with an
``arch`` and an llvm host); targets without one (TPU, FPGA, NPU) raise a one-line error naming the ONNX
artifact, which stays the deliverable for them. ``"host"`` is this machine: llvm with the ``host`` target's mcpu
(:mod:`picojoule.hwmodels.host`: LLVM's name for this CPU where this CPU has all it implies, else an x86-64 level).

Code built for another CPU runs here only if this CPU has its instruction sets: :func:`missing_isa` tells,
and :func:`run`/:func:`measure_latency` refuse to execute code that would die of an illegal instruction.
QDQ models compile, but TVM's ONNX importer turns QuantizeLinear/DequantizeLinear into float arithmetic:
they run as float ops (no int8 speed-up); pruning and low-rank splits are where the time goes down.

``tune_trials > 0`` tunes the fused kernels with MetaSchedule before building (candidates are built and timed
on this CPU, so only for llvm code this CPU runs). Found with TVM 0.27: tuning crashes with apache-tvm-ffi
0.1.15.post2 and works with 0.1.14.post1 (pinned), and MetaSchedule's default 30 s builder timeout kills every
candidate on a 2-core machine, hence :data:`TUNE_BUILD_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.hwmodels.host import HOST
from picojoule.hwmodels.target import Target, load_target

if TYPE_CHECKING:
    import tvm

__all__ = ["HOST", "TUNE_BUILD_TIMEOUT_S", "compile_onnx", "export_library", "host_cpu", "host_target", "native_mcpu",
           "load_library", "measure_latency", "missing_isa", "run", "target_name", "tvm_target"]

TUNE_BUILD_TIMEOUT_S = 600  # per MetaSchedule build batch (its default of 30 s times out on 2 cores)
#: LLVM feature names that are instruction sets (the rest of LLVM's CPU features are tuning hints).
_ISA_PREFIXES = ("avx", "sse", "ssse", "fma", "f16c", "amx", "gfni", "vaes", "vpclmulqdq", "bmi", "sha", "aes",
                 "pclmul", "popcnt", "lzcnt", "movbe", "adx", "cx16", "xsave", "vnni")


def _tvm() -> Any:
    try:
        import tvm
    except ImportError as exc:  # an optional dependency
        raise PicojouleError(f"Apache TVM is not installed ({exc}); pip install 'apache-tvm==0.27.0.post1'") from None
    return tvm


def host_cpu() -> str:
    """The LLVM name of this machine's CPU (``znver3``, ``icelake-server`` ...)."""
    return str(_tvm().target.codegen.llvm_get_system_cpu())


def native_mcpu() -> str:
    """The mcpu TVM builds this CPU's code for: the detected ``host`` target's (LLVM's name for this CPU when this
    CPU has every instruction set it implies, else the x86-64 level its flags hold)."""
    spec = load_target(HOST).tvm
    return spec.mcpu if spec is not None and spec.mcpu else host_cpu()


def host_target() -> tvm.target.Target:
    """llvm for this machine's CPU (``-mcpu=native`` is rejected by TVM's LLVM: the name is detected instead)."""
    return _tvm().target.Target({"kind": "llvm", "mcpu": native_mcpu()})


def target_name(target: Target | str) -> str:
    return target if isinstance(target, str) else target.name


def tvm_target(target: Target | str, host_mcpu: str | None = None, onnx_path: str | Path | None = None
               ) -> tvm.target.Target:
    """The TVM target of a picojoule target (or of ``"host"``); cuda gets an llvm host for ``host_mcpu``
    (default: this machine). A target without a ``tvm`` section raises, naming ``onnx_path`` if given."""
    tvm = _tvm()
    if target == HOST:
        return host_target()
    target = load_target(target) if isinstance(target, str) else target
    spec = target.tvm
    if spec is None:
        where = f"; the ONNX artifact is at {onnx_path}" if onnx_path is not None else ""
        raise PicojouleError(f"TVM cannot build for {target.name} (its target file has no 'tvm' section){where}")
    if spec.kind == "llvm":
        return tvm.target.Target({"kind": "llvm", "mcpu": spec.mcpu or native_mcpu()})
    if spec.arch is None:
        raise PicojouleError(f"target {target.name}: field 'tvm.arch': a cuda target needs an arch such as sm_80")
    host = {"kind": "llvm", "mcpu": host_mcpu or native_mcpu()}
    return tvm.target.Target({"kind": "cuda", "arch": spec.arch}, host=host)


def _isa(features: Any) -> set[str]:
    names = features.keys() if hasattr(features, "keys") else features
    on = {k for k in names if not hasattr(features, "keys") or features[k]}
    return {k for k in on if k.startswith(_ISA_PREFIXES)}


def missing_isa(tvm_tgt: tvm.target.Target) -> list[str]:
    """Instruction sets an llvm target uses that this machine's CPU lacks (empty: its code runs here);
    a non-llvm target gives ``[kind]``."""
    tvm = _tvm()
    if tvm_tgt.kind.name != "llvm":
        return [tvm_tgt.kind.name]
    host = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return sorted(_isa(tvm.target.codegen.llvm_get_cpu_features(tvm_tgt)) - _isa(host))


def compile_onnx(path: str | Path, target: Target | str | tvm.target.Target,
                 input_shape: tuple[int, ...] | None = None, tune_trials: int = 0,
                 tune_dir: str | Path | None = None) -> tvm.runtime.Executable:
    """Import the ONNX file ``path`` with Relax's frontend and build it for ``target`` (picojoule target,
    its name, ``"host"`` or a TVM target). ``input_shape`` fixes the first input's shape (a dynamic batch must be
    fixed: TVM's importer cannot take the Shape arithmetic of a symbolic batch into e.g. ScatterElements).
    ``tune_trials`` > 0: MetaSchedule tuning with that many trials in all, its records in ``tune_dir``
    (default: beside the ONNX file)."""
    if tune_trials < 0:
        raise PicojouleError(f"tune trials must be >= 0, got {tune_trials}")
    tvm = _tvm()
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    tgt = target if isinstance(target, tvm.target.Target) else tvm_target(target, onnx_path=path)
    if not path.is_file():
        raise PicojouleError(f"{path}: ONNX file not found")
    from picojoule.compilers.export import with_static_input

    model = onnx.load(str(path))
    if input_shape is not None:  # static shapes let the exporter's Shape arithmetic fold to constants
        model = with_static_input(model, tuple(input_shape))
    try:
        mod = from_onnx(model)
    except Exception as exc:  # the importer raises ValueError/TVMError/KeyError for unsupported graphs
        raise PicojouleError(f"{path}: TVM's ONNX importer failed: {_message(exc)}") from exc
    if tune_trials:
        _check_runs_here(tgt, "tuning times candidates on this CPU, so ")
        return _tuned_build(mod, tgt, tune_trials, Path(tune_dir) if tune_dir else path.with_suffix(".tuning"))
    try:
        return tvm.compile(mod, tgt)
    except Exception as exc:
        raise PicojouleError(f"{path}: TVM build for {tgt.kind.name} failed: {_message(exc)}") from exc


def tune_cost_model() -> str:
    """MetaSchedule's learned cost model when xgboost is installed (a 130 MB wheel, not a dependency), else
    ``random``: the evolutionary search then ranks candidates by measurement alone."""
    import importlib.util

    return "xgb" if importlib.util.find_spec("xgboost") else "random"


def _tuned_build(mod: Any, tgt: Any, trials: int, work_dir: Path) -> tvm.runtime.Executable:
    """MetaSchedule: tune ``mod``'s fused kernels on this CPU (records in ``work_dir``), then build with them."""
    import psutil

    tvm = _tvm()
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1  # MetaSchedule needs the physical core count
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": str(tgt.attrs["mcpu"]), "num-cores": cores})
    with tgt:  # legalize and fuse first: the fused kernels are the tuning tasks (none are found before)
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.transform.CanonicalizeBindings(), relax.get_pipeline("zero")])(mod)
    try:
        database = ms.relax_integration.tune_relax(
            mod, params={}, target=tgt, work_dir=str(work_dir), max_trials_global=trials,
            num_trials_per_iter=min(64, trials), builder=ms.builder.LocalBuilder(timeout_sec=TUNE_BUILD_TIMEOUT_S),
            cost_model=tune_cost_model(), seed=0)
        return ms.relax_integration.compile_relax(database, mod, tgt, params=None)
    except Exception as exc:
        raise PicojouleError(f"MetaSchedule tuning for {tgt.kind.name} failed: {_message(exc)} "
                             f"(logs in {work_dir})") from exc


def export_library(executable: tvm.runtime.Executable, path: str | Path) -> Path:
    """Write ``executable`` as a shared library (``.so``) loadable with :func:`load_library`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_stderr():  # a "Scope Saving" warning per function
        executable.export_library(str(path))
    return path


def load_library(path: str | Path) -> tvm.runtime.Executable:
    """Load a library written by :func:`export_library`."""
    tvm = _tvm()
    if not Path(path).is_file():
        raise PicojouleError(f"{path}: TVM library not found")
    with _quiet_stderr():  # the loader logs a "Scope Loaded" warning per function
        return tvm.runtime.Executable(tvm.runtime.load_module(str(path)))


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ logging on file descriptor 2; what was written there is re-emitted if an error escapes."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read()[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _vm(executable: Any) -> Any:
    tvm = _tvm()
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())


def _check_runs_here(tgt: Any, why: str = "") -> None:
    if tgt.kind.name != "llvm":
        raise PicojouleError(f"{why}code built for {tgt.kind.name} runs on that device, not on this CPU")
    if missing := missing_isa(tgt):
        raise PicojouleError(f"{why}code built for {tgt.kind.name} -mcpu={tgt.attrs.get('mcpu', '?')} needs "
                             f"{', '.join(missing[:6])} which this CPU ({host_cpu()}) lacks: it cannot run here")


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, (list, tuple)) or type(out).__name__ == "Array":
        out = out[0]
    return out.numpy()


def run(executable: tvm.runtime.Executable, example: Any, target: tvm.target.Target | None = None) -> np.ndarray:
    """The first output of ``executable`` on ``example`` (torch tensor or array), on this machine's CPU.

    Pass the ``target`` it was built for to refuse code whose instruction sets this CPU lacks."""
    tvm = _tvm()
    if target is not None:
        _check_runs_here(target)
    vm = _vm(executable)
    x = tvm.runtime.tensor(_as_array(example), tvm.cpu())
    return _to_numpy(vm["main"](x))


def measure_latency(executable: tvm.runtime.Executable, example: Any, repeat: int = 20, number: int = 5,
                    warmup: int = 3, target: tvm.target.Target | None = None) -> float:
    """Median over ``repeat`` runs of the mean of ``number`` calls, in seconds, on this machine's CPU,
    after ``warmup`` calls. Threads: TVM's pool (``TVM_NUM_THREADS`` at start-up)."""
    tvm = _tvm()
    if repeat < 1 or number < 1 or warmup < 0:
        raise PicojouleError(f"measure_latency: repeat and number must be >= 1, warmup >= 0; got {repeat}, "
                             f"{number}, {warmup}")
    if target is not None:
        _check_runs_here(target)
    dev = tvm.cpu()
    vm = _vm(executable)
    x = tvm.runtime.tensor(_as_array(example), dev)
    for _ in range(warmup):
        vm["main"](x)
    result = vm.time_evaluator("main", dev, number=number, repeat=repeat)(x)
    return float(statistics.median(result.results))


def _as_array(example: Any) -> np.ndarray:
    if hasattr(example, "detach"):
        example = example.detach().cpu().numpy()
    return np.ascontiguousarray(example, dtype=np.float32)


def _message(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
