"""The co-simulation's recorder: a Verilog wrapper around ``gated_conv_engine`` that watches every cycle in
the simulator itself, so that no Python runs per cycle while the engine computes.

:func:`recorder_verilog` writes ``accel_cosim_top``: the engine's ports passed through, one more input
(``tb_flush``), and ``always @(posedge clk)`` logic that appends events to a text log (``+cosim_log=PATH``;
every value is the one of the cycle that ends at the edge, as the engine sampled it):

==========================  =================================================================================
``S c``                     ``start`` high in cycle ``c`` (cycles count rising edges since time 0)
``B c t``                   ``busy`` rises: cycle ``c`` is the run's first (SETUP); ``t``: its simulation time
``W n valid queue addr``    a busy cycle ``n`` of the run (1 = SETUP) with output writes: ``wb_valid``,
                            ``wb_queue``, ``wb_addr`` in hex
``F c n``                   ``busy`` falls: cycle ``c`` is the first idle one, after ``n`` busy cycles
``D c``                     ``done`` high in cycle ``c``
``Q payload``               a response taken (``resp.valid`` and ``resp.ready``), in hex
``C loads dropped reqs``    at each flush: load writes taken so far, offers not taken (``valid`` high with
                            ``ready`` low, on ``load`` and ``req``), requests taken
``E text``                  a protocol error: ``wb_valid`` while idle, ``done`` with ``busy``, X/Z on
                            ``busy``, ``done`` or ``wb_valid`` (four-state simulators)
==========================  =================================================================================

Nothing is watched before the end of the first reset (the engine's registers have no power-up values)
or while ``rst`` is high. The log is flushed when ``done`` is high and when the testbench raises
``tb_flush`` for a cycle (:class:`verification.trace_tb.RecordedTransport` reads it then). The wrapper is
testbench code: it reads the engine's ports only and knows nothing of the model.
"""

from __future__ import annotations

import re

__all__ = ["RECORDER_TOP", "engine_ports", "recorder_verilog"]

RECORDER_TOP = "accel_cosim_top"

_PORT = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", re.MULTILINE)
# The engine's ports the recorder reads by name (the rest pass through).
_WATCHED = (
    *("clk", "rst", "start", "busy", "done", "wb_valid", "wb_queue", "wb_addr"),
    *("load__valid", "load__ready", "req__valid", "req__ready"),
    *("resp__valid", "resp__ready", "resp__payload"),
)


def engine_ports(verilog: str, top: str) -> list[tuple[str, str, int]]:
    """``(direction, name, width)`` of every port of module ``top`` in ``verilog``."""
    start = re.search(rf"^module {re.escape(top)}\(", verilog, re.MULTILINE)
    if start is None:
        raise ValueError(f"no module {top} in the Verilog")
    end = verilog.index("\nendmodule", start.end())
    ports = [(d, name, int(hi) + 1 if hi else 1) for d, hi, name in _PORT.findall(verilog[start.end() : end])]
    missing = sorted(set(_WATCHED) - {name for _, name, _ in ports})
    if missing:
        raise ValueError(f"module {top} lacks the ports the recorder watches: {', '.join(missing)}")
    return ports


def recorder_verilog(verilog: str, top: str, burst_depth: int = 1 << 14) -> str:
    """The Verilog-2005 source of ``accel_cosim_top`` around module ``top`` of ``verilog``; a load burst
    holds at most ``burst_depth`` writes."""
    ports = engine_ports(verilog, top)
    names = ", ".join(name for _, name, _ in ports)
    decls = "\n".join(
        f"  {d} {f'[{w - 1}:0] ' if w > 1 else ''}{name};\n  wire {f'[{w - 1}:0] ' if w > 1 else ''}{name};"
        for d, name, w in ports
    )
    # The load stream reaches the engine from the burst while one runs, from the ports otherwise.
    driven = {"load__valid": "eng_load_valid", "load__payload": "eng_load_payload"}
    conns = ",\n".join(f"    .{name}({driven.get(name, name)})" for _, name, _ in ports)
    width = next(w for _, name, w in ports if name == "load__payload")
    return f"""// Testbench wrapper written by verification/recorder.py: the engine, and a log of what it did.
module {RECORDER_TOP}({names}, tb_flush, tb_burst, tb_burst_n, tb_burst_busy);
{decls}
  input tb_flush;
  wire tb_flush;
  input tb_burst;
  wire tb_burst;
  input [31:0] tb_burst_n;
  wire [31:0] tb_burst_n;
  output tb_burst_busy;

  // A load burst: tb_burst high for a cycle reads tb_burst_n payloads from the file +cosim_load names
  // (one hex word per line) and offers them on the engine's load stream, one per cycle while it is ready;
  // tb_burst_busy is high until the last one is taken.
  reg [{width - 1}:0] burst_mem [0:{burst_depth - 1}];
  reg [{width - 1}:0] burst_word;  // the offered write, a register: the memory is read at edges only
  reg [31:0] burst_i, burst_n;
  reg burst_on;
  reg [8*1024-1:0] load_path;
  wire eng_load_valid = burst_on ? 1'b1 : load__valid;
  wire [{width - 1}:0] eng_load_payload = burst_on ? burst_word : load__payload;
  assign tb_burst_busy = burst_on;
  initial begin
    burst_on = 0;
    burst_i = 0;
    burst_n = 0;
    if (!$value$plusargs("cosim_load=%s", load_path)) load_path = "cosim_load.hex";
  end
  always @(posedge clk) begin
    if (tb_burst === 1'b1) begin
      $readmemh(load_path, burst_mem, 0, tb_burst_n - 1);
      burst_n <= tb_burst_n;
      burst_i <= 1;
      burst_word <= burst_mem[0];
      burst_on <= tb_burst_n != 0;
    end else if (burst_on && load__ready === 1'b1) begin
      burst_word <= burst_mem[burst_i];
      burst_i <= burst_i + 1;
      if (burst_i == burst_n) burst_on <= 0;
    end
  end

  {top} engine (
{conns}
  );

  integer fd;
  reg [8*1024-1:0] path;
  reg [31:0] cycle, busy_n, loads, dropped, reqs;
  reg busy_q;
  initial begin
    if (!$value$plusargs("cosim_log=%s", path)) path = "cosim.log";
    fd = $fopen(path, "w");
    cycle = 0;
    busy_n = 0;
    loads = 0;
    dropped = 0;
    reqs = 0;
    busy_q = 0;
  end

  // Nothing is watched before the first reset ends: the registers have no power-up values.
  reg reset_seen;
  initial reset_seen = 0;

  always @(posedge clk) begin
    if (rst === 1'b1) reset_seen = 1;
    else if (reset_seen === 1'b1) watch;
    cycle = cycle + 1;
  end

  task watch;
  begin
    if (start === 1'b1) $fwrite(fd, "S %0d\\n", cycle);
    if ((^{{busy, done}}) === 1'bx)
      $fwrite(fd, "E busy = %b, done = %b are not 0/1 in cycle %0d\\n", busy, done, cycle);
    if ((^wb_valid) === 1'bx)
      $fwrite(fd, "E wb_valid = %b is not 0/1 in cycle %0d\\n", wb_valid, cycle);
    if (busy === 1'b1) begin
      if (busy_q !== 1'b1) begin
        $fwrite(fd, "B %0d %0d\\n", cycle, $time);
        busy_n = 0;
      end
      busy_n = busy_n + 1;
      if (wb_valid != 0) $fwrite(fd, "W %0d %h %h %h\\n", busy_n, wb_valid, wb_queue, wb_addr);
    end else begin
      if (busy_q === 1'b1) $fwrite(fd, "F %0d %0d\\n", cycle, busy_n);
      if (wb_valid != 0) $fwrite(fd, "E wb_valid = %b while busy is low, cycle %0d\\n", wb_valid, cycle);
    end
    if (done === 1'b1) begin
      if (busy === 1'b1) $fwrite(fd, "E done and busy high in cycle %0d\\n", cycle);
      $fwrite(fd, "D %0d\\n", cycle);
      $fflush(fd);
    end
    if (resp__valid === 1'b1 && resp__ready === 1'b1) $fwrite(fd, "Q %h\\n", resp__payload);
    if (eng_load_valid === 1'b1) begin
      if (load__ready === 1'b1) loads = loads + 1;
      else dropped = dropped + 1;
    end
    if (req__valid === 1'b1) begin
      if (req__ready === 1'b1) reqs = reqs + 1;
      else dropped = dropped + 1;
    end
    if (tb_flush === 1'b1) begin
      $fwrite(fd, "C %0d %0d %0d\\n", loads, dropped, reqs);
      $fflush(fd);
    end
    busy_q = busy;
  end
  endtask
endmodule
"""
