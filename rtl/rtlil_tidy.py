"""A tidy of the RTLIL the Verilog is written from: the same logic, fewer Verilator lint warnings.

Amaranth's RTLIL, once yosys's ``proc -nomux`` has made its registers cells, still holds processes (the case
statements of ``m.Switch`` and ``m.If``) in every module, and yosys's own clean-up passes (``opt_clean``,
``wreduce``) skip every module with a process. Written out as is, the Verilog declares the full width of
every sum (an Amaranth sum is one bit wider than its widest operand) where the design reads only its low
bits, names a net twice (the signal's name, unread, beside the yosys net its readers use), and leaves width
extensions implicit. :func:`tidy_rtlil` does, on the RTLIL text, what those passes would do, and no more:

- **names**: a reader of a net that a module-level ``connect`` names (``connect \\x $5 [7:0]``) reads the
  name instead (``\\x``), a submodule's input port the parent's wire named after it — yosys's ``opt_clean``
  prefers public names the same way; never a ``signed`` name (Verilog would read the net as signed), and
  only through ports known to be inputs (a cell whose ports the tidy does not know keeps its connections:
  an RTLIL ``connect`` has no direction, so rewriting an output would move its driver);
- **dead cells**: a cell without side effects whose outputs are yosys nets nothing reads is removed, and so
  is a second name of a net (a wire that only aliases other bits) that nothing reads;
- **narrowing**: a sum, difference, product, bitwise operation, shift left or multiplexer whose high output
  bits nothing reads computes only the bits that are read (the low bits of these operations depend only on
  the operands' low bits, so their operands are cut to the same width) — ``wreduce``'s rule for them;
- **explicit widths**: the operands of an arithmetic, bitwise or comparison cell are extended to the width
  the cell computes at (sign- or zero-extension, as the cell's semantics would), a ``!x`` of several bits is
  ``x == 0``;
- **complete case statements**: a ``switch`` without a default gains an empty one (nothing assigned: what an
  unmatched value did before);
- **unused ports**: an input port a submodule never reads (the ``rst`` of a module whose registers all go
  without reset) is removed from the module and its instance — yosys's ``rmports``.

Nothing here changes a value, a register or a memory: every change is one the cells' RTLIL semantics make
equivalent, and the co-simulation of the Verilog against the cycle model checks the result bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["tidy_rtlil"]


_SIG_TOKEN = re.compile(r"\s*(\{|\}|\[\d+(?::\d+)?\]|\d+'[01xzm-]*|-?\d+|[\\$]\S+)")

# Cells whose only output is Y and which have no side effect.
_PURE = frozenset(
    "$add $sub $mul $neg $not $pos $and $or $xor $xnor $mux $pmux $eq $ne $lt $le $gt $ge $eqx $nex "
    "$logic_not $logic_and $logic_or $reduce_and $reduce_or $reduce_xor $reduce_xnor $reduce_bool "
    "$shl $shr $sshl $sshr $shift $shiftx $bmux $demux".split()
)
# Cells whose low Y bits depend only on the low bits of A (and of B, unless B is a shift amount).
_LOW_BITS = frozenset("$add $sub $mul $neg $not $pos $and $or $xor $xnor $shl $sshl".split())
_SHIFTS = frozenset("$shl $sshl".split())
# Binary cells computing at Y's width with both operands extended to it.
_AT_Y_WIDTH = frozenset("$add $sub $mul $and $or $xor $xnor".split())
_UNARY_AT_Y_WIDTH = frozenset("$neg $not $pos".split())
_COMPARES = frozenset("$eq $ne $lt $le $gt $ge".split())
# Other cells the tidy knows the outputs of (flip-flops, latches, memory ports); any other cell's connections
# are all taken as read and never rewritten.
_FLOPS = "$dff $dffe $adff $adffe $sdff $sdffe $sdffce $dffsr $dffsre $aldff $aldffe $dlatch $adlatch"
_OUTPUTS = {
    **{kind: ("\\Q",) for kind in _FLOPS.split()},
    "$memrd_v2": ("\\DATA",),
    "$memwr_v2": (),
    "$meminit_v2": (),
}


def _is_internal(name: str) -> bool:
    return name.startswith("$")


# ----------------------------------------------------------------------------------------------- signals


def _parse_sig(text: str, pos: int, widths: dict[str, int]) -> tuple[list, int]:
    """Parse one RTLIL signal at ``text[pos:]``; return its bits (LSB first) and the position after it."""
    m = _SIG_TOKEN.match(text, pos)
    if not m:
        raise ValueError(f"no signal at {text[pos:]!r}")
    token, pos = m.group(1), m.end()
    if token == "{":
        parts = []
        while True:
            m = _SIG_TOKEN.match(text, pos)
            if m and m.group(1) == "}":
                pos = m.end()
                break
            bits, pos = _parse_sig(text, pos, widths)
            parts.append(bits)
        return [b for part in reversed(parts) for b in part], pos
    if "'" in token:
        n, value = token.split("'")
        # (a constant shorter than its width extends like yosys's: x and z repeat, anything else is 0)
        value = value.rjust(int(n), value[0] if value and value[0] in "xz" else "0")
        return list(reversed(value)), pos
    if token[0] in "-0123456789":
        value = int(token) & 0xFFFFFFFF
        return [str((value >> i) & 1) for i in range(32)], pos
    bits = [(token, i) for i in range(widths[token])]
    m = _SIG_TOKEN.match(text, pos)
    if m and m.group(1).startswith("["):
        pos = m.end()
        hi, _, lo = m.group(1)[1:-1].partition(":")
        lo = lo or hi
        bits = bits[int(lo) : int(hi) + 1]
    return bits, pos


def _format_sig(bits: list, widths: dict[str, int]) -> str:
    """RTLIL text of ``bits`` (LSB first): runs of one wire or of constants, most significant first."""
    chunks: list[str] = []
    i = len(bits) - 1
    while i >= 0:
        b = bits[i]
        j = i
        if isinstance(b, str):
            while j > 0 and isinstance(bits[j - 1], str):
                j -= 1
            chunks.append(f"{i - j + 1}'" + "".join(bits[k] for k in range(i, j - 1, -1)))
        else:
            name, hi = b
            while j > 0 and not isinstance(bits[j - 1], str) and bits[j - 1] == (name, bits[j][1] - 1):
                j -= 1
            lo = bits[j][1]
            if lo == 0 and hi == widths[name] - 1:
                chunks.append(name)
            elif lo == hi:
                chunks.append(f"{name} [{lo}]")
            else:
                chunks.append(f"{name} [{hi}:{lo}]")
        i = j - 1
    if not chunks:
        raise ValueError("empty signal")
    return chunks[0] if len(chunks) == 1 else "{ " + " ".join(chunks) + " }"


@dataclass
class _Sig:
    """A signal as written (``text``) and as bits; written back re-formatted only when changed."""

    text: str
    bits: list
    changed: bool = False

    def set(self, bits: list) -> None:
        if bits != self.bits:
            self.bits, self.changed = list(bits), True

    def render(self, widths: dict[str, int]) -> str:
        return _format_sig(self.bits, widths) if self.changed else self.text


def _sig(text: str, widths: dict[str, int]) -> _Sig:
    bits, end = _parse_sig(text, 0, widths)
    if text[end:].strip():
        raise ValueError(f"trailing text after signal {text!r}")
    return _Sig(text.strip(), bits)


def _two_sigs(text: str, widths: dict[str, int]) -> tuple[_Sig, _Sig]:
    bits, end = _parse_sig(text, 0, widths)
    return _Sig(text[:end].strip(), bits), _sig(text[end:], widths)


def _extend(bits: list, width: int, signed: bool) -> list:
    if len(bits) >= width:
        return list(bits[:width])
    fill = bits[-1] if signed else "0"
    return list(bits) + [fill] * (width - len(bits))


# ------------------------------------------------------------------------------------------------ module


@dataclass
class _Wire:
    width: int
    head: str  # the declaration's text before the name, without the width: "wire input 3 signed"
    direction: str | None  # "input", "output", "inout" or None
    attrs: list[str]

    @property
    def signed(self) -> bool:
        return "signed" in self.head.split()

    def render(self, name: str) -> list[str]:
        words = self.head.split()
        decl = " ".join([words[0]] + ([f"width {self.width}"] if self.width != 1 else []) + words[1:])
        return self.attrs + [f"  {decl} {name}"]


@dataclass
class _Cell:
    kind: str
    name: str
    attrs: list[str]
    params: dict[str, str]
    conns: dict[str, _Sig]
    alive: bool = True

    def int_param(self, name: str) -> int:
        return int(self.params[name])


@dataclass
class _ProcLine:
    """A process line: raw text, or a keyword and its signals (assign, update: two; switch: one)."""

    indent: str
    keyword: str
    sigs: list[_Sig] = field(default_factory=list)
    raw: str = ""


@dataclass
class _Module:
    name: str
    head: list[str]  # the module line and its attributes
    wires: dict[str, _Wire]
    items: list  # ("wire", name) | _Cell | ("connect", lhs, rhs) | ("process", lines) | ("raw", lines)

    def widths(self) -> dict[str, int]:
        return {n: w.width for n, w in self.wires.items()}


def _parse(text: str) -> tuple[list[str], list[_Module]]:
    lines = text.splitlines()
    preamble: list[str] = []
    modules: list[_Module] = []
    pending_attrs: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("attribute "):
            pending_attrs.append(line)
        elif line.startswith("module "):
            mod = _Module(line.split()[1], pending_attrs + [line], {}, [])
            pending_attrs = []
            i = _parse_module_body(lines, i + 1, mod)
            modules.append(mod)
        else:
            preamble.extend(pending_attrs + [line])
            pending_attrs = []
        i += 1
    return preamble, modules


def _parse_module_body(lines: list[str], i: int, mod: _Module) -> int:
    # Wires first (a signal can name a wire declared after its reader), then the rest.
    for line in lines[i:]:
        if line == "end":
            break
        if line.startswith("  wire "):
            words = line.split()
            width = int(words[words.index("width") + 1]) if "width" in words else 1
            mod.wires[words[-1]] = _Wire(width, "", None, [])
    widths = mod.widths()
    attrs: list[str] = []
    while lines[i] != "end":
        line = lines[i]
        stripped = line.strip()
        if line.startswith("  attribute "):
            attrs.append(line)
        elif line.startswith("  wire "):
            words = stripped.split()
            name = words[-1]
            head = words[:-1]
            if "width" in head:
                k = head.index("width")
                del head[k : k + 2]
            if "offset" in head or "upto" in head:
                raise ValueError(f"module {mod.name}: wire {name} with offset or upto indices: {line!r}")
            direction = next((d for d in ("input", "output", "inout") if d in head), None)
            mod.wires[name] = _Wire(widths[name], " ".join(head), direction, attrs)
            mod.items.append(("wire", name))
            attrs = []
        elif line.startswith("  cell "):
            _, kind, name = stripped.split()
            cell = _Cell(kind, name, attrs, {}, {})
            attrs = []
            i += 1
            while lines[i] != "  end":
                words = lines[i].strip().split(None, 2)
                if words[0] == "parameter":
                    cell.params[words[1]] = words[2]
                elif words[0] == "connect":
                    cell.conns[words[1]] = _sig(words[2], widths)
                else:
                    raise ValueError(f"cell {name}: unexpected line {lines[i]!r}")
                i += 1
            mod.items.append(cell)
        elif line.startswith("  process "):
            body = attrs + [line]
            attrs = []
            procs: list[_ProcLine] = []
            i += 1
            while lines[i] != "  end":
                text = lines[i]
                indent = text[: len(text) - len(text.lstrip())]
                words = text.strip().split(None, 1)
                if words[0] in ("assign", "update"):
                    procs.append(_ProcLine(indent, words[0], list(_two_sigs(words[1], widths))))
                elif words[0] == "switch":
                    procs.append(_ProcLine(indent, "switch", [_sig(words[1], widths)]))
                elif words[0] in ("case", "end", "attribute"):
                    if words[0] == "case" and re.search(r"[\\$]", text):
                        raise ValueError(f"process in {mod.name}: a case compares with a signal: {text!r}")
                    procs.append(_ProcLine(indent, "", raw=text))
                else:
                    # (sync rules and memory writes: proc -nomux has made them cells)
                    raise ValueError(f"process in {mod.name}: unexpected line {text!r}")
                i += 1
            mod.items.append(("process", body, procs))
        elif line.startswith("  connect "):
            lhs, rhs = _two_sigs(stripped[len("connect ") :], widths)
            mod.items.append(("connect", lhs, rhs, attrs))
            attrs = []
        elif line.startswith("  memory "):
            mod.items.append(("raw", attrs + [line]))
            attrs = []
        else:
            raise ValueError(f"module {mod.name}: unexpected line {line!r}")
        i += 1
    return i


def _render(preamble: list[str], modules: list[_Module]) -> str:
    out = list(preamble)
    for mod in modules:
        widths = mod.widths()
        out.extend(mod.head)
        for item in mod.items:
            if isinstance(item, _Cell):
                if not item.alive:
                    continue
                out.extend(item.attrs)
                out.append(f"  cell {item.kind} {item.name}")
                out.extend(f"    parameter {k} {v}" for k, v in item.params.items())
                out.extend(f"    connect {k} {s.render(widths)}" for k, s in item.conns.items())
                out.append("  end")
            elif item[0] == "wire":
                if item[1] in mod.wires:
                    out.extend(mod.wires[item[1]].render(item[1]))
            elif item[0] == "connect":
                out.extend(item[3])
                out.append(f"  connect {item[1].render(widths)} {item[2].render(widths)}")
            elif item[0] == "process":
                out.extend(item[1])
                for p in item[2]:
                    if p.keyword:
                        out.append(f"{p.indent}{p.keyword} " + " ".join(s.render(widths) for s in p.sigs))
                    else:
                        out.append(p.raw)
                out.append("  end")
            else:
                out.extend(item[1])
        out.append("end")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ passes


def _whole_wire(mod: _Module, bits: list, public: bool = False) -> bool:
    """Whether ``bits`` are one whole wire, in order: a yosys net (``$5``), or a named one if ``public``."""
    if not bits or isinstance(bits[0], str) or _is_internal(bits[0][0]) == public:
        return False
    name = bits[0][0]
    return bits == [(name, i) for i in range(mod.wires[name].width)]


def _base_name(name: str) -> str:
    """``rhalf`` for ``\\rhalf$12``: the name Amaranth gave before making it unique."""
    return name.lstrip("\\").split("$")[0]


class _Design:
    def __init__(self, text: str):
        self.preamble, self.modules = _parse(text)
        self.by_name = {m.name: m for m in self.modules}

    def cell_outputs(self, cell: _Cell) -> tuple[str, ...] | None:
        """The ports of ``cell`` it drives; None when the tidy does not know them (then every connection
        counts as read and none is rewritten)."""
        if cell.kind in self.by_name:
            sub = self.by_name[cell.kind]
            if any(p not in sub.wires or sub.wires[p].direction is None for p in cell.conns):
                return None  # (positional connections: Amaranth names every port)
            return tuple(p for p in cell.conns if sub.wires[p].direction in ("output", "inout"))
        if cell.kind in _PURE:
            return ("\\Y",)
        return _OUTPUTS.get(cell.kind)

    def reads(self, mod: _Module, rewritable: bool = False) -> list[_Sig]:
        """Every signal of ``mod`` read by something (``rewritable``: only those a reader of a known
        direction reads, which the name rule may rewrite)."""
        out = []
        for item in mod.items:
            if isinstance(item, _Cell):
                if item.alive:
                    outs = self.cell_outputs(item)
                    if outs is None and rewritable:
                        continue
                    out.extend(s for p, s in item.conns.items() if outs is None or p not in outs)
            elif item[0] == "connect":
                out.append(item[2])
            elif item[0] == "process":
                for p in item[2]:
                    out.extend(p.sigs[1:] if p.keyword in ("assign", "update") else p.sigs)
        return out

    def read_bits(self, mod: _Module) -> set:
        bits = {b for s in self.reads(mod) for b in s.bits if not isinstance(b, str)}
        for name, w in mod.wires.items():
            if w.direction in ("output", "inout"):
                bits.update((name, i) for i in range(w.width))
        return bits

    # -- names

    def prefer_names(self, mod: _Module) -> None:
        connects = [item for item in mod.items if isinstance(item, tuple) and item[0] == "connect"]
        # An instance's input port reads the parent's wire named after it (Amaranth's ``rhalf$12`` for a
        # buffer's ``rhalf``) when that wire is a whole-signal alias of what the port reads.
        # (A signed name is never substituted: Verilog would read the net as signed where it was not.)
        named: dict[tuple, list[_Sig]] = {}
        for _, lhs, rhs, _ in connects:
            if _whole_wire(mod, lhs.bits, public=True):
                wire = mod.wires[lhs.bits[0][0]]
                if wire.direction is None and not wire.signed:
                    named.setdefault(tuple(rhs.bits), []).append(lhs)
        taken: set[int] = set()
        for cell in mod.items:
            if isinstance(cell, _Cell) and cell.alive and cell.kind in self.by_name:
                outs = self.cell_outputs(cell)
                if outs is None:
                    continue
                for port, sig in cell.conns.items():
                    for lhs in named.get(tuple(sig.bits), []) if port not in outs else []:
                        if id(lhs) not in taken and _base_name(lhs.bits[0][0]) == _base_name(port):
                            taken.add(id(lhs))
                            sig.set(lhs.bits)
                            break
        # Elsewhere a reader of a net some connect names reads the (first) name.
        alias: dict = {}
        for _, lhs, rhs, _ in connects:
            for lb, rb in zip(lhs.bits, rhs.bits, strict=True):
                if isinstance(lb, str) or _is_internal(lb[0]) or isinstance(rb, str) or rb in alias:
                    continue
                if rb[0] != lb[0] and not mod.wires[lb[0]].signed:
                    alias[rb] = lb
        own = {id(rhs): set(lhs.bits) for _, lhs, rhs, _ in connects}
        for sig in self.reads(mod, rewritable=True):
            mine = own.get(id(sig), ())
            sig.set([b if alias.get(b, b) in mine else alias.get(b, b) for b in sig.bits])

    # -- dead cells and narrowing

    def remove_dead(self, mod: _Module) -> bool:
        read = self.read_bits(mod)
        changed = False
        for k, item in enumerate(mod.items):
            if not (isinstance(item, tuple) and item[0] == "connect"):
                continue
            lhs = item[1].bits
            # A yosys net, or a second name of a net (a named wire that only aliases other bits), unread.
            alias = _whole_wire(mod, lhs) or (
                _whole_wire(mod, lhs, public=True) and mod.wires[lhs[0][0]].direction is None
            )
            if alias and not any(b in read for b in lhs):
                mod.items[k] = ("raw", [])
                changed = True
        for cell in mod.items:
            if isinstance(cell, _Cell) and cell.alive and cell.kind in _PURE:
                y = cell.conns["\\Y"].bits
                if all(not isinstance(b, str) and _is_internal(b[0]) and b not in read for b in y):
                    cell.alive = False
                    changed = True
        return changed

    def narrow(self, mod: _Module) -> bool:
        read = self.read_bits(mod)
        changed = False
        for item in mod.items:
            if isinstance(item, tuple) and item[0] == "connect" and _whole_wire(mod, item[1].bits):
                lhs, rhs = item[1], item[2]
                k = max((i + 1 for i, b in enumerate(lhs.bits) if b in read), default=1)
                if k < len(lhs.bits):
                    mod.wires[lhs.bits[0][0]].width = k
                    lhs.set(lhs.bits[:k])
                    rhs.set(rhs.bits[:k])
                    changed = True
        for cell in mod.items:
            if not (
                isinstance(cell, _Cell) and cell.alive and (cell.kind in _LOW_BITS or cell.kind == "$mux")
            ):
                continue
            y = cell.conns["\\Y"].bits
            if not _whole_wire(mod, y):
                continue
            name = y[0][0]
            used = [i for i in range(len(y)) if y[i] in read]
            k = max(used) + 1 if used else 1
            if k >= len(y):
                continue
            mod.wires[name].width = k
            cell.conns["\\Y"].set(y[:k])
            if cell.kind == "$mux":
                cell.params["\\WIDTH"] = str(k)
                for port in ("A", "B"):
                    cell.conns[f"\\{port}"].set(cell.conns[f"\\{port}"].bits[:k])
            else:
                cell.params["\\Y_WIDTH"] = str(k)
                ports = ("A",) if cell.kind in _SHIFTS or "\\B" not in cell.conns else ("A", "B")
                for port in ports:
                    if cell.int_param(f"\\{port}_WIDTH") > k:
                        cell.params[f"\\{port}_WIDTH"] = str(k)
                        cell.conns[f"\\{port}"].set(cell.conns[f"\\{port}"].bits[:k])
            changed = True
        return changed

    # -- explicit widths

    def explicit_widths(self, mod: _Module) -> None:
        for cell in mod.items:
            if not (isinstance(cell, _Cell) and cell.alive):
                continue
            kind, p = cell.kind, cell.params
            if kind == "$logic_not" and cell.int_param("\\A_WIDTH") > 1:
                n = cell.int_param("\\A_WIDTH")
                cell.kind = "$eq"
                cell.params = {
                    "\\A_SIGNED": "0", "\\A_WIDTH": str(n), "\\B_SIGNED": "0", "\\B_WIDTH": str(n),
                    "\\Y_WIDTH": p["\\Y_WIDTH"],
                }  # fmt: skip
                cell.conns = {
                    "\\A": cell.conns["\\A"],
                    "\\B": _Sig("", ["0"] * n, True),
                    "\\Y": cell.conns["\\Y"],
                }
                continue
            if kind in _AT_Y_WIDTH or kind in _UNARY_AT_Y_WIDTH or kind in _SHIFTS:
                width = cell.int_param("\\Y_WIDTH")
                signed = p["\\A_SIGNED"] == "1" and p.get("\\B_SIGNED", "1") == "1"
                if kind in _SHIFTS or kind in _UNARY_AT_Y_WIDTH:
                    signed = p["\\A_SIGNED"] == "1"
                ports = ("A",) if kind in _SHIFTS or kind in _UNARY_AT_Y_WIDTH else ("A", "B")
            elif kind in _COMPARES:
                width = max(cell.int_param("\\A_WIDTH"), cell.int_param("\\B_WIDTH"))
                signed = p["\\A_SIGNED"] == "1" and p["\\B_SIGNED"] == "1"
                ports = ("A", "B")
            else:
                continue
            for port in ports:
                if cell.int_param(f"\\{port}_WIDTH") != width:
                    cell.conns[f"\\{port}"].set(_extend(cell.conns[f"\\{port}"].bits, width, signed))
                    p[f"\\{port}_WIDTH"] = str(width)

    # -- case statements

    @staticmethod
    def complete_cases(mod: _Module) -> None:
        for item in mod.items:
            if not (isinstance(item, tuple) and item[0] == "process"):
                continue
            procs: list[_ProcLine] = item[2]
            out: list[_ProcLine] = []
            # For each open switch (by indent), whether a default case has been seen.
            stack: list[tuple[str, bool]] = []
            for p in procs:
                text = p.raw.strip()
                if p.keyword == "switch":
                    stack.append((p.indent, False))
                elif text == "case" and stack:
                    stack[-1] = (stack[-1][0], True)
                elif text == "end" and stack and p.indent == stack[-1][0]:
                    indent, has_default = stack.pop()
                    if not has_default:
                        out.append(_ProcLine(indent + "  ", "", raw=indent + "  case"))
                out.append(p)
            item[2][:] = out

    # -- unused ports

    def remove_unread_inputs(self) -> None:
        # Innermost modules first: a port a submodule drops can leave its parent's port unread.
        while self._remove_unread_inputs():
            pass

    def _remove_unread_inputs(self) -> bool:
        changed = False
        top = self.modules_instantiated()
        for mod in self.modules:
            if mod.name not in top:
                continue
            read = self.read_bits(mod)
            unread = [
                n for n, w in mod.wires.items()
                if w.direction == "input" and not any((n, i) in read for i in range(w.width))
            ]  # fmt: skip
            for name in unread:
                del mod.wires[name]
                for parent in self.modules:
                    for cell in parent.items:
                        if isinstance(cell, _Cell) and cell.kind == mod.name:
                            cell.conns.pop(name, None)
            if unread:
                self._renumber_ports(mod)
                changed = True
        return changed

    def modules_instantiated(self) -> set[str]:
        return {
            c.kind for m in self.modules for c in m.items if isinstance(c, _Cell) and c.kind in self.by_name
        }

    @staticmethod
    def _renumber_ports(mod: _Module) -> None:
        ports = [(int(w.head.split()[w.head.split().index(w.direction) + 1]), n, w)
                 for n, w in mod.wires.items() if w.direction]  # fmt: skip
        for new, (_, _, w) in enumerate(sorted(ports), start=1):
            words = w.head.split()
            words[words.index(w.direction) + 1] = str(new)
            w.head = " ".join(words)

    # -- wires nothing refers to

    @staticmethod
    def drop_unreferenced(mod: _Module) -> None:
        used = set()
        for item in mod.items:
            sigs: list[_Sig] = []
            if isinstance(item, _Cell):
                if item.alive:
                    sigs = list(item.conns.values())
            elif item[0] == "connect":
                sigs = [item[1], item[2]]
            elif item[0] == "process":
                sigs = [s for p in item[2] for s in p.sigs]
            used.update(b[0] for s in sigs for b in s.bits if not isinstance(b, str))
        for name in [n for n, w in mod.wires.items() if w.direction is None and n not in used]:
            del mod.wires[name]


def tidy_rtlil(text: str) -> str:
    """The RTLIL ``text`` (as yosys writes it after ``proc -nomux``) with the tidy of the module docstring."""
    design = _Design(text)
    for mod in design.modules:
        design.prefer_names(mod)
        while design.remove_dead(mod) | design.narrow(mod):
            pass
        design.explicit_widths(mod)
        design.complete_cases(mod)
    design.remove_unread_inputs()
    for mod in design.modules:
        design.drop_unreferenced(mod)
    return _render(design.preamble, design.modules)
