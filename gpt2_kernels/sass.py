"""Compile every registered kernel configuration for a GPU that is not here, and read its SASS.

    python -m gpt2_kernels.sass [--arch 80|90|100|80,90|all] [--op NAME] [--match TEXT] [--json] [--dump DIR] [--jobs N]
                           [--module MOD]

Each configuration that an op registers in ``gpt2_kernels.registry`` (the ones its launcher can
pick) is compiled by Triton for the target architecture without a GPU present, the same way
a launch would compile it. The cubin is then read with the ``cuobjdump`` and ``nvdisasm``
that ship with Triton, and per configuration we report:

    registers      registers per thread (``REG`` in ``cuobjdump -res-usage``)
    spills         what Triton calls ``n_spills`` on a GPU: local memory a thread, in 4-byte
                   words (CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES / 4; here (STACK + LOCAL) / 4
                   from ``cuobjdump -res-usage``: ptxas puts spilled registers in the stack)
    local_loads    LDL instructions in the SASS (reads of spilled registers)
    local_stores   STL instructions in the SASS (writes of spilled registers)
    shared_mem     dynamic shared memory in bytes that Triton launches the kernel with (a
                   config over the architecture's limit is reported as failed: it would not launch)
    tmem           columns of tensor memory (sm_100: 128 lanes x 512 columns of 32 bits per
                   SM) a block allocates, 0 elsewhere; over 512 is reported as failed
    hmma, hgmma,   tensor-core instructions: HMMA (mma.sync, sm_80+), HGMMA (wgmma, sm_90) and
    utcmma         the tcgen05 MMAs of sm_100 (UTCHMMA for fp16/bf16/tf32; UTCQMMA, UTCIMMA, ...)

and the static cost of the main loop, read from the SASS (see `loop_report`):

    per_score      main-loop instructions per score (attention: per element of the (rows, cols)
                   score tile one iteration computes), i.e. instructions x 32 x warps / tile
    per_element    the same for kernels without a score tile (LayerNorm, GELU): per element of
                   the BLOCK_* tile (of the whole kernel when it has no loop)
    mma            tensor-core instruction shapes (HGMMA.64x128x16, HMMA.16816, ...). A tcgen05
                   MMA names no shape in its SASS: MxN come from its instruction descriptor,
                   the UMOV immediate that sets its idesc register, and K from the operand type
                   (16 for fp16/bf16, 8 for tf32), e.g. UTCHMMA.128x128x16; a descriptor not
                   set by an immediate shows as the bare opcode
    tma            whether operands arrive by TMA (UTMALDG)
    loop_mma,      (JSON only) the tensor-core opcodes in the main loop, and whether it issues
    loop_tma       TMA loads itself
    barriers       BAR instructions (block-wide barriers: BAR.SYNC, BAR.RED, ...) in the main
                   loop (in the whole kernel when it has none): each stalls every warp of the
                   block, so a loop that converts layouts between reductions shows many
    waits          whether the loop waits for all of its own MMAs before its first exp
                   (MUFU.EX2): yes means the exp units and the tensor cores take turns; "-"
                   without wgmma or tcgen05 MMAs (see `waits_on_own_mma`)
    ctas, warps    blocks and warps resident per SM, from registers, shared memory, tensor
                   memory and warps

``--dump DIR`` also writes each configuration's SASS (``*.sass``) and cubin (``*.cubin``)
into DIR, beside ``DIR/index.json``: a JSON list, one object per configuration, with the keys
op, kernel, arch, dtype, num_warps, num_stages, constexprs, tile and sass (the file name,
relative to DIR).

Not read: warp-specialized kernels (``tl.range(..., warp_specialize=True)``), whose load,
MMA and softmax partitions each have their own loop after the first EXIT, are costed by
one of them at most; the shipped kernels have none.

The exit status is 1 if any configuration fails to compile or touches local memory (spills),
so scripts can gate on it; 2 for bad arguments (an ``--arch`` not in ``MAX_SHARED_MEM``'s
table, a ``--dump`` that names a file), filters that match no configuration, an op module
that fails to import, or Triton's interpreter switched on (``TRITON_INTERPRET=1`` makes ``@triton.jit`` hand back
interpreted functions, which cannot be compiled; unset it for this command). Stdout carries
only the report (the table, or with ``--json`` one JSON document); anything else, such as
the PTX that Triton prints when ptxas fails, goes to stderr.

Pointer arguments are compiled as 16-byte aligned, as every launch on a PyTorch tensor is;
integer arguments that the launcher guarantees to be multiples of 16 are named in the
config's ``divisible_by_16``, and its ``options`` (``maxnreg``, ...) go to the compiler.
Compiled kernels land in Triton's own cache (~/.triton/cache), which makes reruns fast.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from importlib import import_module

ARCHS = (80, 90, 100)  # what "--arch all" means: A100, H100/H200 and B200/GB200

# The most shared memory one block may have (cudaDevAttrMaxSharedMemoryPerBlockOptin). A
# config over it compiles, then fails at launch with "out of resource", so it counts as failed.
MAX_SHARED_MEM = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}

# ----------------------------------------------------------------------------------------
# Compiling without a GPU
# ----------------------------------------------------------------------------------------


def ast_source_args(cfg):
    """The (signature, constexprs, attrs) triple for ``triton.compiler.ASTSource``, as a launch
    would build it for the registry's CompileConfig ``cfg``.

    ASTSource(fn, signature, constexprs, attrs) is the same in Triton 3.6 and 3.9. Its
    ``signature`` is keyed by argument name; a launch lists every argument in order, with
    constexprs typed "constexpr", and so do we (the cubin does not depend on that order, or
    on whether the constexprs are listed). ``attrs`` must be keyed by index-path tuples, so
    argument positions matter there: ``[["tt.divisibility", 16]]`` marks an argument as a
    multiple of 16 (for pointers, 16-byte aligned). Constexprs the config leaves out take
    their defaults; one with no default is an error that names it.
    """
    typed = cfg.signature()
    sig, consts, attrs = {}, {}, {}
    for i, (name, param) in enumerate(cfg.parameters().items()):
        if name in typed:
            sig[name] = typed[name]
            if typed[name].startswith("*") or name in cfg.divisible_by_16:
                attrs[(i,)] = [["tt.divisibility", 16]]
            continue
        if name in cfg.constexprs:
            consts[name] = cfg.constexprs[name]
        elif param.default is not param.empty:
            consts[name] = param.default
        else:
            raise ValueError(f"{cfg.name} [{cfg.label}]: constexpr {name} is missing from the config's constexprs")
        sig[name] = "constexpr"
    return sig, consts, attrs


def compile_kernel(cfg, arch):
    """Compile a registry CompileConfig for ``sm_<arch>``; no GPU needed. Returns Triton's
    CompiledKernel (``.asm["cubin"]``, ``.asm["ptx"]``, ``.metadata.shared``, ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(cfg.kernel, JITFunction):
        raise TypeError(
            f"{cfg.name!r} is not a compilable @triton.jit function (it is a {type(cfg.kernel).__name__}); "
            "was TRITON_INTERPRET set when its module was imported?"
        )
    sig, consts, attrs = ast_source_args(cfg)
    src = ASTSource(fn=cfg.kernel, signature=sig, constexprs=consts, attrs=attrs)
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, **cfg.options}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


# ----------------------------------------------------------------------------------------
# Reading the cubin
# ----------------------------------------------------------------------------------------

# "        /*0a70*/  @!P0 HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;" -> "HGMMA"
_SASS_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", re.MULTILINE)
# " Function _k:\n  REG:62 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:568 ..."
_RES_USAGE = re.compile(r"Function\s+(\S+?):\s*\n\s*(.*)")


def count_opcodes(sass):
    """Counter of SASS opcodes (without their .modifiers) in cuobjdump/nvdisasm output."""
    return Counter(_SASS_OPCODE.findall(sass))


def parse_res_usage(text):
    """{function name: {"REG": 62, "STACK": 0, "SHARED": 1024, "LOCAL": 0, ...}} from
    ``cuobjdump -res-usage``."""
    out = {}
    for name, fields in _RES_USAGE.findall(text):
        out[name] = {k: int(v) for k, v in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", fields)}
    return out


def _tool(name):
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else name  # else hope for a CUDA toolkit on PATH


def cubin_stats(cubin, name):
    """Registers, local memory, tensor-core instruction counts and the main loop's cost
    (`loop_report`, less what depends on the launch) of kernel ``name`` in a cubin.

    Disassembling costs 0.5-1.5 s of CPU a kernel, more than many compiles, so results are
    kept next to Triton's own cache entries, keyed by the cubin's bytes."""
    from triton.runtime.cache import get_cache_manager

    key = hashlib.sha256(b"gpt2_kernels.sass/5-tcgen05\0" + name.encode() + b"\0" + cubin).hexdigest()
    cache = get_cache_manager(key)
    hit = cache.get_file("sass_stats.json")
    if hit is not None:
        with open(hit) as f:
            return json.load(f)
    stats = _cubin_stats(cubin, name)
    cache.put(json.dumps(stats), "sass_stats.json", binary=False)
    return stats


def disassemble(cubin):
    """The SASS text of a cubin (nvdisasm prints what ``cuobjdump -sass`` does, a little faster)."""
    with tempfile.TemporaryDirectory(prefix="kernels-sass-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout


def _cubin_stats(cubin, name):
    with tempfile.TemporaryDirectory(prefix="kernels-sass-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True)
    usage = parse_res_usage(res.stdout)
    if name not in usage:
        raise RuntimeError(f"cuobjdump -res-usage shows no function {name}: {res.stdout.strip()}")
    u = usage[name]
    sass = disassemble(cubin)
    ops = count_opcodes(sass)
    return {
        "registers": u.get("REG", 0),
        # Spilled registers live in the stack frame (STACK); LOCAL is the rest of the local
        # memory. The driver's CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, which Triton divides by 4
        # into n_spills on a GPU, covers both.
        "spills": (u.get("STACK", 0) + u.get("LOCAL", 0)) // 4,
        "local_loads": ops["LDL"],
        "local_stores": ops["STL"],
        "hmma": ops["HMMA"],
        "hgmma": ops["HGMMA"],
        "utcmma": sum(n for op, n in ops.items() if _is_tcgen05_mma(op)),
        **loop_report(sass),
    }


# ----------------------------------------------------------------------------------------
# The static cost of the main loop
# ----------------------------------------------------------------------------------------

# "        /*0a70*/  @!P0 HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;" -> "@!P0 HGMMA.64x64x16.F32 R24, ..."
_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", re.MULTILINE)
_SASS_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
# "@!P0 HGMMA.64x64x16.F32 ..." -> ("HGMMA", ".64x64x16.F32")
_SASS_PARTS = re.compile(r"^(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)")
_MMA = ("HGMMA", "HMMA")


def _is_tcgen05_mma(op):
    # UTCHMMA (kind::f16 and kind::tf32), UTCQMMA (fp8/fp6/fp4), UTCIMMA (int8), UTCOMMA (mxf4), ...
    return op.startswith("UTC") and op.endswith("MMA")


def _is_mma(op):
    return op in _MMA or _is_tcgen05_mma(op)


def sass_instructions(sass):
    """([instruction text without its address], {label: index of the instruction after it})."""
    instrs, labels = [], {}
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        m = _SASS_LINE.match(line)
        if m:
            instrs.append(m.group(1))
    return instrs, labels


def _parts(instr):
    m = _SASS_PARTS.match(instr)
    return (m.group(1), m.group(2)) if m else ("", "")


def loops(instrs, labels):
    """(first, last) instruction indices of every loop: a branch back to an earlier label.
    Branches after the first unconditional EXIT are left out: there ptxas puts out-of-line
    retry code (TMA barrier waits) that jumps back into the middle of the kernel."""
    exits = [i for i, t in enumerate(instrs) if t.startswith("EXIT")]
    end = exits[0] if exits else len(instrs)
    found = []
    for i, t in enumerate(instrs[:end]):
        if _parts(t)[0] == "BRA":
            m = re.search(r"(\.L_x_\d+)", t)
            if m and labels.get(m.group(1), i + 1) <= i:
                found.append((labels[m.group(1)], i))
    return found


def main_loop(instrs, labels):
    """The loop a kernel spends its time in: among loops with tensor-core instructions the
    shortest (causal attention's unmasked loop: the masked ones around the diagonal do more
    per tile); in a kernel without any, the longest loop. None when there is no loop."""
    found = loops(instrs, labels)
    mma = [(e - s, s, e) for s, e in found if any(_is_mma(_parts(instrs[j])[0]) for j in range(s, e + 1))]
    if mma:
        return min(mma)[1:]
    return max(((e - s, s, e) for s, e in found), default=(0, None, None))[1:] if found else None


def waits_on_own_mma(body):
    """Whether, at the first exp (MUFU.EX2) of an iteration, every tensor-core MMA issued so
    far has been waited for. Two iterations are walked so that MMAs left in flight across the
    back edge count. None when the loop has no wgmma or tcgen05 MMA, or no exp.

    wgmma (sm_90): an HGMMA with gsb0 commits a group; WARPGROUP.DEPBAR.LE gsb0, N leaves at
    most N in flight.
    tcgen05 (sm_100): the MMAs issued since the last commit are committed to an mbarrier by
    UTCBAR [bar], and whoever needs their result waits on that barrier (SYNCS.PHASECHK...
    [bar]). The barrier is known only by the text of its address operand, so a commit and a
    wait that reach one barrier through different registers are not paired, and the MMAs
    behind it count as still in flight: on sm_100 "no" is weaker evidence than on sm_90.
    """
    ops = [_parts(t)[0] for t in body]
    if "HGMMA" in ops:
        in_flight = 0
        for iteration in range(2):
            for t in body:
                op, mods = _parts(t)
                if op == "HGMMA" and "gsb0" in t:
                    in_flight += 1
                elif op == "WARPGROUP" and mods.startswith(".DEPBAR"):
                    m = re.search(r"gsb0,\s*(0x[0-9a-f]+|\d+)", t)
                    if m:
                        in_flight = min(in_flight, int(m.group(1), 0))
                elif op == "MUFU" and mods.startswith(".EX2") and iteration == 1:
                    return in_flight == 0
        return None
    if not any(map(_is_tcgen05_mma, ops)):
        return None
    uncommitted, committed = False, set()  # MMAs not yet committed; barriers with MMAs behind them
    for iteration in range(2):
        for t in body:
            op, mods = _parts(t)
            bar = re.search(r"\[[^\]]*\]", t)
            if _is_tcgen05_mma(op):
                uncommitted = True
            elif op == "UTCBAR" and bar:
                committed.add(bar.group(0))
                uncommitted = False
            elif op == "SYNCS" and ".PHASECHK" in mods and bar:
                committed.discard(bar.group(0))
            elif op == "MUFU" and mods.startswith(".EX2") and iteration == 1:
                return not uncommitted and not committed
    return None


# A tcgen05 instruction descriptor (PTX ISA, "Instruction descriptor" of tcgen05.mma):
# bits 7-9 the type of A (kind::f16: 0 fp16, 1 bf16; kind::tf32: 2), 17-22 N / 8, 24-28 M / 16.
_IDESC = re.compile(r"idesc\[(UR\d+|0x[0-9a-f]+)\]")


def tcgen05_shape(instrs, i):
    """The shape "MxNxK" of the tcgen05 MMA instrs[i] ("MxN" when K is not known for its
    opcode), or "" when its instruction descriptor is not an immediate that can be found:
    the last instruction before it (in program order) that writes its idesc register must
    be an unpredicated UMOV of an immediate."""
    m = _IDESC.search(instrs[i])
    if not m:
        return ""
    reg, value = m.group(1), None
    if reg.startswith("0x"):
        value = int(reg, 16)
    else:
        n = int(reg[2:])
        for t in reversed(instrs[:i]):
            w = re.match(r"^(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s+UR(\d+)\b", t)
            if not w:
                continue
            dest = int(w.group(4))
            if dest == n or (".64" in w.group(3) and dest + 1 == n):
                imm = re.match(r"UMOV UR\d+, (0x[0-9a-f]+|\d+)$", t)
                value = int(imm.group(1), 0) if imm and not w.group(1) else None
                break
    if value is None:
        return ""
    m_rows, n_cols = ((value >> 24) & 0x1F) << 4, ((value >> 17) & 0x3F) << 3
    if _parts(instrs[i])[0] != "UTCHMMA":
        return f"{m_rows}x{n_cols}"
    return f"{m_rows}x{n_cols}x{8 if (value >> 7) & 7 == 2 else 16}"


def mma_shapes(instrs):
    """The distinct tensor-core instruction shapes of a kernel, sorted: HMMA.16816,
    HGMMA.64x128x16, UTCHMMA.128x128x16, ..."""
    shapes = set()
    for i, (op, mods) in enumerate(map(_parts, instrs)):
        if op in _MMA:
            shapes.add(op + mods.split(".F32")[0].split(".F16")[0])
        elif _is_tcgen05_mma(op):
            shape = tcgen05_shape(instrs, i)
            shapes.add(f"{op}.{shape}" if shape else op)
    return sorted(shapes)


def loop_report(sass):
    """What the cost report needs from a kernel's SASS, independent of its launch:
    loop_instructions (in the main loop; the whole kernel's when it has none, with
    in_loop False), mma (tensor-core shapes, e.g. "HGMMA.64x128x16", see `mma_shapes`), tma,
    waits (see `waits_on_own_mma`), and what the main loop itself runs: loop_mma (its
    tensor-core opcodes, e.g. ["UTCHMMA"]) and loop_tma (whether it issues TMA loads)."""
    instrs, labels = sass_instructions(sass)
    loop = main_loop(instrs, labels)
    body = instrs[loop[0]:loop[1] + 1] if loop else instrs
    ops = [_parts(t)[0] for t in body]
    return {"loop_instructions": len(body), "in_loop": loop is not None, "mma": mma_shapes(instrs),
            "loop_mma": sorted({op for op in ops if _is_mma(op)}) if loop else [],
            "barriers": ops.count("BAR"), "tma": any(_parts(t)[0] == "UTMALDG" for t in instrs),
            "loop_tma": loop is not None and "UTMALDG" in ops, "waits": waits_on_own_mma(body)}


def instructions_per_element(loop_instructions, num_warps, tile, constexprs):
    """Main-loop instructions x threads / elements an iteration handles: the score tile
    (rows x cols) when the config gives one, else the product of its BLOCK_* constexprs."""
    if tile:
        elements = tile[0] * tile[1]
    else:
        elements = 1
        for name, value in constexprs.items():
            if name.startswith("BLOCK") and isinstance(value, int) and value > 0:
                elements *= value
    return round(loop_instructions * 32 * num_warps / elements, 2)


# Per SM: 64K registers, 64 warps, 32 blocks; shared memory for blocks (1 KB of it reserved
# per block); on sm_100, 512 columns of tensor memory. Registers are allocated per warp in
# units of 256.
_SM_SHARED = {80: 167936, 86: 102400, 89: 102400, 90: 233472, 100: 233472}
_SM_TMEM_COLUMNS = 512


def resident_ctas(arch, registers, shared_mem, num_warps, tmem=0):
    """Blocks of this kernel that fit on one SM at once (``tmem``: the tensor-memory columns a
    block allocates; a block that cannot get them waits, so they bound residency too)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // per_warp) // num_warps
    by_warps = 64 // num_warps
    smem = _SM_SHARED.get(arch, 102400)
    by_smem = smem // (shared_mem + 1024) if shared_mem else 32
    by_tmem = _SM_TMEM_COLUMNS // tmem if tmem else 32
    return max(0, min(by_regs, by_warps, by_smem, by_tmem, 32))


# ----------------------------------------------------------------------------------------
# The registered configurations
# ----------------------------------------------------------------------------------------


def load_ops():
    """Import every op (``gpt2_kernels/__init__`` imports them all), so that each registers its
    configuration generator; returns the op names."""
    import gpt2_kernels

    return list(gpt2_kernels.__all__)


_CONFIGS = []  # the configurations being inspected; forked workers read them from here


_STATS = ("registers", "spills", "local_loads", "local_stores", "shared_mem", "tmem", "hmma", "hgmma", "utcmma",
          "per_score", "per_element", "loop_instructions", "barriers", "mma", "loop_mma", "tma", "loop_tma", "waits",
          "ctas", "warps_per_sm")


def dump_name(row):
    """The file name (without extension) of a row's SASS and cubin under --dump."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{row['op']}-{row['kernel']}-{row['label']}").strip("_")
    return f"{slug}-sm{row['arch']}"


def inspect_config(cfg, arch, dump=None):
    """One report row: the configuration, and its stats or the error that stopped it. With
    ``dump`` (a folder), the SASS and cubin are written there too (row["sass"] names them)."""
    row = {
        "op": cfg.op,
        "kernel": cfg.name,
        "label": cfg.label,
        "arch": arch,
        "dtype": cfg.dtype,
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        "constexprs": {k: (v if isinstance(v, (int, float, bool, str)) or v is None else repr(v))
                       for k, v in cfg.constexprs.items()},
        "tile": list(cfg.tile) if cfg.tile else None,
    }
    t0 = time.perf_counter()
    try:
        ck = compile_kernel(cfg, arch)
        stats = cubin_stats(ck.asm["cubin"], ck.metadata.name)
        row.update({k: stats[k] for k in ("registers", "spills", "local_loads", "local_stores", "hmma", "hgmma",
                                          "utcmma", "loop_instructions", "barriers", "mma", "loop_mma", "tma",
                                          "loop_tma", "waits")})
        row["shared_mem"] = ck.metadata.shared
        row["tmem"] = getattr(ck.metadata, "tmem_size", 0) or 0
        cost = instructions_per_element(stats["loop_instructions"], cfg.num_warps, cfg.tile, cfg.constexprs)
        row["per_score"], row["per_element"] = (cost, None) if cfg.tile else (None, cost)
        row["ctas"] = resident_ctas(arch, stats["registers"], ck.metadata.shared, cfg.num_warps, row["tmem"])
        row["warps_per_sm"] = row["ctas"] * cfg.num_warps
        limit = MAX_SHARED_MEM.get(arch)
        if limit is not None and ck.metadata.shared > limit:
            row["error"] = f"needs {ck.metadata.shared} bytes of shared memory; sm_{arch} allows {limit}"
        # Triton compiles a kernel that asks for more tensor memory than an SM has (into one
        # that does nothing: no MMA is left in its SASS), so the limit is checked here.
        if row["tmem"] > _SM_TMEM_COLUMNS:
            row["error"] = f"needs {row['tmem']} columns of tensor memory; sm_{arch} has {_SM_TMEM_COLUMNS}"
        if dump:
            name = dump_name(row)
            with open(os.path.join(dump, name + ".cubin"), "wb") as f:
                f.write(ck.asm["cubin"])
            with open(os.path.join(dump, name + ".sass"), "w") as f:
                f.write(disassemble(ck.asm["cubin"]))
            row["sass"] = name + ".sass"
    except Exception as e:
        msg = f"{type(e).__name__}: {e}".strip()
        row.update({k: None for k in _STATS}, error=msg[:2000])
    row["seconds"] = round(time.perf_counter() - t0, 2)  # compile + disassembly; ~0 when cached
    return row


_DUMP = []  # the --dump folder, if any; forked workers read it from here


def _inspect_index(job):
    index, arch = job
    return inspect_config(_CONFIGS[index], arch, _DUMP[0] if _DUMP else None)


def row_ok(row):
    return "error" not in row and row["spills"] == 0 and row["local_loads"] == 0 and row["local_stores"] == 0


def inspect_all(configs, archs, jobs=None, dump=None):
    """Rows for every configuration x arch (that it exists for), in order. Compiles in forked worker processes
    (ptxas and the disassemblers are separate processes anyway, so this scales with cores)."""
    _CONFIGS[:] = configs
    _DUMP[:] = [dump] if dump else []
    work = [(i, arch) for arch in archs for i, cfg in enumerate(configs) if cfg.arch in (None, arch)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = min(jobs or cores or 1, len(work))
    if jobs <= 1 or sys.platform != "linux":
        return [_inspect_index(w) for w in work]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers inherit the imported kernels and the registry; nothing is pickled but indices.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_inspect_index, work))


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

_COLUMNS = [("op", "op"), ("kernel", "kernel"), ("label", "label"), ("arch", "sm"), ("num_warps", "warps"),
            ("num_stages", "stages"), ("registers", "regs"), ("spills", "spills"), ("local_loads", "LDL"),
            ("local_stores", "STL"), ("shared_mem", "smem"), ("tmem", "TMEM"), ("hmma", "HMMA"),
            ("hgmma", "HGMMA"), ("utcmma", "UTCMMA"), ("per_score", "instr/score"), ("per_element", "instr/elem"),
            ("barriers", "BAR"), ("mma", "mma"), ("tma", "TMA"), ("waits", "waits"), ("ctas", "CTAs/SM"), ("warps_per_sm", "warps/SM")]


def format_table(rows):
    def cell(row, key):
        v = row.get(key)
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list):
            return ",".join(x.split(".", 1)[-1] for x in v) or "-"
        return "-" if v is None else str(v)

    table = [[h for _, h in _COLUMNS] + ["status"]]
    for r in rows:
        status = "FAILED" if "error" in r else ("ok" if row_ok(r) else "SPILLS")
        table.append([cell(r, k) for k, _ in _COLUMNS] + [status])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    numeric = {i for i, (k, _) in enumerate(_COLUMNS) if k not in ("op", "kernel", "label", "mma")}
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             .rstrip() for line in table]
    lines.insert(1, "-" * len(lines[0]))
    for r in rows:
        if "error" in r:
            lines.append(f"\n{r['kernel']} [{r['label']}] sm_{r['arch']}: {r['error']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpt2_kernels.sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90", help="target compute capability: one of "
                        f"{', '.join(map(str, sorted(MAX_SHARED_MEM)))}, several joined by commas (80,90), "
                        "or 'all' (80, 90 and 100); default 90")
    parser.add_argument("--op", action="append", help="inspect only this op (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--dump", metavar="DIR", help="also write each config's SASS and cubin into DIR, "
                        "listed in DIR/index.json")
    parser.add_argument("--match", action="append",
                        help="inspect only configs whose label contains this text (repeatable; any matches)")
    parser.add_argument("--module", action="append", default=[],
                        help="also import this module first (e.g. a scratch kernel that registers configs)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    args = parser.parse_args(argv)
    if args.arch == "all":
        archs = list(ARCHS)
    elif all(a.isdigit() and int(a) in MAX_SHARED_MEM for a in args.arch.split(",")):
        archs = [int(a) for a in args.arch.split(",")]
    else:  # not a GPU ptxas knows: every config would fail alike, each with the compiler's dump
        parser.error(f"--arch must be among {', '.join(map(str, sorted(MAX_SHARED_MEM)))} (comma-separated) "
                     f"or 'all' ({', '.join(map(str, ARCHS))}); got {args.arch!r}")
    if args.dump and os.path.exists(args.dump) and not os.path.isdir(args.dump):
        parser.error(f"--dump {args.dump} is a file; it takes a folder (made if missing)")
    from gpt2_kernels._common import INTERPRET

    if INTERPRET:
        parser.error("TRITON_INTERPRET is set, so @triton.jit made the kernels interpreted functions, which "
                     "cannot be compiled; run without it: env -u TRITON_INTERPRET python -m gpt2_kernels.sass ...")

    # Triton 3.9 warns on every compile that its fp-fusion default will change; launches get
    # the same default, so the warning says nothing about these kernels.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")

    # Keep stdout for the report: Triton print()s a failing kernel's whole PTX, and compiler
    # diagnostics may write to file descriptor 1 directly, in this process or the workers.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as report:
            return _run(args, archs, parser, report)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run(args, archs, parser, report):
    t0 = time.perf_counter()
    import triton

    from gpt2_kernels import registry

    loaded = load_ops()
    failed = {}
    for module in args.module:
        try:
            import_module(module)
        except Exception as e:
            failed[module] = f"{type(e).__name__}: {e}"
    for module, err in failed.items():
        print(f"gpt2_kernels.sass: error: importing {module} failed: {err}", file=sys.stderr)
    configs = registry.configs()
    if args.op:
        known = sorted({c.op for c in configs})
        unknown = [op for op in args.op if op not in known]
        if unknown:
            parser.error(f"no registered configurations for op {', '.join(unknown)}; registered ops: "
                         f"{', '.join(known) or 'none'}")
        configs = [c for c in configs if c.op in args.op]
    if args.match:
        configs = [c for c in configs if any(m in c.label for m in args.match)]
    if not configs:  # inspecting nothing is not a pass: the filter is wrong, or nothing registered
        what = " and ".join(f"--{k} {' / '.join(map(repr, v))}" for k, v in (("op", args.op), ("match", args.match)) if v)
        print(f"gpt2_kernels.sass: error: no registered configuration matches {what or 'at all'}; "
              f"see the labels with: python -m gpt2_kernels.sass --json --op OP", file=sys.stderr)
        return 2

    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    rows = inspect_all(configs, archs, args.jobs, args.dump)
    if args.dump:
        keys = ("op", "kernel", "arch", "dtype", "num_warps", "num_stages", "constexprs", "tile", "sass")
        with open(os.path.join(args.dump, "index.json"), "w") as f:
            json.dump([{k: r.get(k) for k in keys} for r in rows if "sass" in r], f, indent=1)
    elapsed = time.perf_counter() - t0
    n_failed = sum("error" in r for r in rows)
    total_spills = sum((r["spills"] or 0) for r in rows)
    total_local = sum((r["local_loads"] or 0) + (r["local_stores"] or 0) for r in rows)

    if args.json:
        doc = {
            "arch": archs[0] if len(archs) == 1 else archs,
            "triton": triton.__version__,
            "ops": loaded,
            "import_errors": failed,
            "seconds": round(elapsed, 2),
            "kernels": rows,
        }
        print(json.dumps(doc, indent=1), file=report)
    else:
        print(format_table(rows), file=report)
        print(f"\n{len(rows)} configs on {', '.join(f'sm_{a}' for a in archs)} (triton {triton.__version__}): "
              f"{n_failed} failed to compile, {total_spills} spilled words, {total_local} LDL/STL; "
              f"{elapsed:.1f} s", file=report)
    if failed:
        return 2
    return 1 if any(not row_ok(r) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
