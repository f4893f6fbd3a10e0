"""Per-PE array ports: a flat bit vector in the signature, an ``ArrayLayout`` view in Python."""

from __future__ import annotations

from amaranth.hdl import Signal
from amaranth.lib import data, wiring

__all__ = ["ArrayPort", "plain_view"]


class ArrayPort:
    """A component's array port ``name``: the signature member ``name_bits`` (``flow`` of the layout's
    bits), read and written as a :class:`~amaranth.lib.data.View` of it through ``array_layouts[name]``.

    Amaranth writes one alias wire per element and field of a port whose shape is a layout, and Verilator
    reports each unused (``-Wall``); a flat port has none, and Python code keeps its typed access
    (``mac.acc[i]``, ``chain.coords[i].co``).

    Declare ``acc = ArrayPort(Out)`` on the component's class, set ``self.array_layouts`` (name →
    ``ArrayLayout``) in ``__init__`` and pass ``**ArrayPort.members(self)`` to ``super().__init__``.
    """

    def __init__(self, flow: wiring.Flow) -> None:
        self.flow = flow
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, component, owner=None):
        if component is None:
            return self
        return data.View(component.array_layouts[self.name], getattr(component, f"{self.name}_bits"))

    @staticmethod
    def members(component) -> dict[str, wiring.Member]:
        """The signature members of every array port declared on ``component``'s class."""
        ports = {}
        for cls in reversed(type(component).__mro__):
            ports.update({name: v for name, v in vars(cls).items() if isinstance(v, ArrayPort)})
        return {f"{name}_bits": port.flow(component.array_layouts[name].size) for name, port in ports.items()}


def plain_view(view: data.View, name: str) -> data.View:
    """``view``'s layout over a plain signal ``name`` of its size, init and reset-lessness: to put in place
    of a layout-shaped port of a component (``self.load.payload = plain_view(self.load.payload, ...)``)
    after ``super().__init__``.

    Python code reads and writes its fields as before, and the signature still holds (same shape), but
    Amaranth writes no alias wire per field (or element) of the port in the Verilog, which Verilator
    reports unused (``-Wall``) when the logic reads the port's bits directly.
    """
    target = view.as_value()
    signal = Signal(len(target), name=name, init=target.init, reset_less=target.reset_less)
    return data.View(view.shape(), signal)
