"""A strict stand-in for the `tensorrt` module, derived at run time from the REAL bindings of one
release (imported without a GPU, see `_trt_bindings.py`).

What it checks, on every use sr-deploy makes of it:
- every module attribute, class attribute, enum member, property and method exists in that
  release (looked up on the real module / real classes, nothing listed by hand);
- every call matches one of the release's pybind11 signatures, parsed from the first docstring
  line(s) (`name(self: T, a: int, b: str = ...) -> R`, overloads included): argument count,
  keyword names (`argN` parameters are positional-only), and the argument kinds (str, int,
  bool, buffer, Dims-like, real enum of the named type, stand-in of the named class);
- a property is assigned only when the real property has a setter.
A violation raises (AttributeError / TypeError, as the real module would) and is recorded in
`violations`, so a caller that swallows the exception still fails the test.

What it returns: objects, never results. A method returns a stand-in object of its documented
return type (or a value a scenario put in `answers`, e.g. the engine's tensor names); a
"serialized engine" is the fixed bytes `NOT_AN_ENGINE`. Nothing here builds or runs anything:
the tests that use it check sr-deploy's calls, never an engine's output.

Real objects are passed through where the real release constructs them without its libraries:
enums, `Logger`, `ILogger` (sr-deploy subclasses it) and `Dims`.
"""

from __future__ import annotations

import operator
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_AN_ENGINE = b"sr-deploy strict TensorRT stand-in: this is not an engine"
PASS_THROUGH = {"Logger", "ILogger", "Dims", "Dims2", "Dims3", "Dims4", "DimsHW"}


class StandInViolation(AssertionError):
    """Raised (as AttributeError / TypeError subclasses below) and recorded for every misuse."""


class MissingAttribute(StandInViolation, AttributeError):
    pass


class BadCall(StandInViolation, TypeError):
    pass


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool

    @property
    def positional_only(self) -> bool:
        return re.fullmatch(r"arg\d+", self.name) is not None


@dataclass(frozen=True)
class Signature:
    text: str
    params: tuple[Param, ...]  # without self
    returns: str


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets / angle brackets (types like list[a, b], <Enum.X: 0>)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts]


_SIG = re.compile(r"^(?:\d+\.\s*)?(\w*)\((.*)\)\s*->\s*(.+)$")  # property getters have no name


def parse_signature(line: str) -> Signature | None:
    match = _SIG.match(line.strip())
    if not match:
        return None
    params = []
    for i, part in enumerate(_split_top(match.group(2))):
        name, _, rest = part.partition(":")
        typ, eq, _default = rest.partition("=")
        if i == 0 and name.strip() in ("self", "arg0") and "." in typ:  # the bound object itself
            continue
        params.append(Param(name.strip(), typ.strip(), bool(eq)))
    return Signature(line.strip(), tuple(params), match.group(3).strip())


def signatures_of(func: Any) -> list[Signature]:
    """All pybind11 signatures of a bound function: the first docstring line, or the numbered
    lines after 'Overloaded function.'."""
    doc = (getattr(func, "__doc__", None) or "").strip()
    lines = doc.splitlines()
    if not lines:
        return []
    if lines[0].endswith("(*args, **kwargs)") and "Overloaded function." in doc:
        found = [parse_signature(ln) for ln in lines if re.match(r"^\d+\.\s*\w+\(", ln.strip())]
        return [s for s in found if s is not None]
    sig = parse_signature(lines[0])
    return [sig] if sig else []


# --------------------------------------------------------------------------- the stand-in module


def _qualified(name: str) -> str:
    return name.replace("tensorrt.tensorrt.", "").replace("nvonnxparser::IParserError", "ParserError")


class StrictTensorRT(types.ModuleType):
    """`sys.modules["tensorrt"] = StrictTensorRT(real_tensorrt)`.

    answers: {(class name, attribute): value or callable(stand_in_self, *args)} -> what a method or
        property returns instead of the default stand-in of its documented type.
    calls: [(class name, method or "set:"/"get:" property, args as text)] in order.
    violations: one line per misuse (the same text as the exception raised).
    """

    def __init__(self, real: types.ModuleType, answers: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__("tensorrt")
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "answers", dict(answers or {}))
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "violations", [])
        object.__setattr__(self, "_classes", {})
        object.__setattr__(self, "__version__", real.__version__)

    # -- module attributes
    def __getattr__(self, name: str) -> Any:
        real = object.__getattribute__(self, "_real")
        if name.startswith("__"):
            raise AttributeError(name)
        if not hasattr(real, name):
            self._violate(MissingAttribute, f"tensorrt {real.__version__} has no attribute {name!r}")
        obj = getattr(real, name)
        if isinstance(obj, type) and hasattr(obj, "__members__"):
            return _EnumView(self, name, obj)
        if isinstance(obj, type) and name not in PASS_THROUGH:
            classes = object.__getattribute__(self, "_classes")
            if name not in classes:
                classes[name] = _stand_in_class(self, name, obj)
            return classes[name]
        return obj

    # -- helpers used by the proxies
    def _violate(self, kind: type[Exception], message: str) -> None:
        object.__getattribute__(self, "violations").append(message)
        raise kind(message)

    def _record(self, cls: str, what: str, args: tuple, kwargs: dict) -> None:
        text = ", ".join([_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()])
        object.__getattribute__(self, "calls").append((cls, what, text))

    def real_class(self, name: str) -> Any:
        obj: Any = object.__getattribute__(self, "_real")
        for part in _qualified(name).split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    def default_for(self, type_text: str) -> Any:
        """A stand-in value of a documented type: objects, never results."""
        t = _qualified(type_text)
        if t in ("None",):
            return None
        if t == "bool":
            return True
        if t in ("int", "typing.SupportsInt"):
            return 0
        if t in ("float", "typing.SupportsFloat"):
            return 0.0
        if t == "str":
            return ""
        if t.startswith(("list[", "collections.abc.Sequence[")):
            return []
        if t == "IHostMemory":
            return _host_memory(self, NOT_AN_ENGINE)
        if t == "Dims":
            return object.__getattribute__(self, "_real").Dims(())
        cls = self.real_class(t)
        if isinstance(cls, type) and not hasattr(cls, "__members__"):
            return _stand_in_class(self, t, cls).__new_proxy__()
        return None


def _show(value: Any) -> str:
    if isinstance(value, Proxy):
        return f"<{object.__getattribute__(value, '_cls_name')}>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return True  # pybind11 takes a bool for an int
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _matches(module: StrictTensorRT, type_text: str, value: Any) -> bool:
    """Does `value` fit the documented parameter type? Unknown types are accepted."""
    t = _qualified(type_text)
    if value is None:
        return t.endswith("None") or "Optional" in t
    if t == "str":
        return isinstance(value, str)
    if t in ("int", "typing.SupportsInt"):
        return _is_int(value)
    if t in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "bool":
        return isinstance(value, bool)
    if t in ("buffer", "typing_extensions.Buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if t in ("Dims", "tuple", "list") or t.startswith(("collections.abc.Sequence[", "list[")):
        kinds = {"tuple": tuple, "list": list}.get(t, (tuple, list))
        real_dims = object.__getattribute__(module, "_real").Dims
        if t == "Dims" and isinstance(value, real_dims):
            return True
        return isinstance(value, kinds) and all(_is_int(v) for v in value)
    cls = module.real_class(t)
    if cls is None or not isinstance(cls, type):
        return True
    if hasattr(cls, "__members__") or t.split(".")[0] in PASS_THROUGH:
        return isinstance(value, cls)
    if isinstance(value, Proxy):
        proxied = object.__getattribute__(value, "_real_cls")
        return issubclass(proxied, cls)
    return isinstance(value, cls)


def _bind(module: StrictTensorRT, sig: Signature, args: tuple, kwargs: dict) -> str | None:
    """None when the call fits `sig`, else why not."""
    params = sig.params
    if len(args) > len(params):
        return f"{len(args)} positional arguments, at most {len(params)}"
    bound = dict(zip((p.name for p in params), args))
    names = {p.name: p for p in params}
    for key, value in kwargs.items():
        if key not in names:
            return f"no parameter named {key!r}"
        if names[key].positional_only:
            return f"{key!r} cannot be passed by keyword (positional only)"
        if key in bound:
            return f"{key!r} given twice"
        bound[key] = value
    for p in params:
        if p.name not in bound and not p.has_default:
            return f"missing argument {p.name!r}"
        if p.name in bound and not _matches(module, p.type, bound[p.name]):
            return f"argument {p.name!r} = {_show(bound[p.name])} is not a {p.type}"
    return None


class Proxy:
    """A stand-in instance of one real TensorRT class: attribute access and calls are checked
    against that class of the real release."""

    __slots__ = ("_cls_name", "_module", "_real_cls", "_state")

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            return object.__getattribute__(self, name)
        module: StrictTensorRT = object.__getattribute__(self, "_module")
        cls_name = object.__getattribute__(self, "_cls_name")
        real_cls = object.__getattribute__(self, "_real_cls")
        state = object.__getattribute__(self, "_state")
        attr = _lookup(real_cls, name)
        if attr is None:
            module._violate(MissingAttribute, f"tensorrt {module.__version__}: {cls_name} has no attribute {name!r}")
        answers = object.__getattribute__(module, "answers")
        if isinstance(attr, property):
            module._record(cls_name, f"get:{name}", (), {})
            if name in state:
                return state[name]
            answer = answers.get((cls_name, name))
            if answer is not None:
                return answer(self) if callable(answer) else answer
            fget_sig = signatures_of(attr.fget) if attr.fget is not None else []
            return module.default_for(fget_sig[0].returns) if fget_sig else None
        sigs = signatures_of(attr)

        def call(*args: Any, **kwargs: Any) -> Any:
            module._record(cls_name, name, args, kwargs)
            if sigs:
                reasons = [_bind(module, s, args, kwargs) for s in sigs]
                if all(r is not None for r in reasons):
                    detail = "; ".join(f"{s.text} -> {r}" for s, r in zip(sigs, reasons))
                    module._violate(
                        BadCall,
                        f"tensorrt {module.__version__}: {cls_name}.{name} called with "
                        f"({_show_args(args, kwargs)}) matches no signature: {detail}",
                    )
            answer = answers.get((cls_name, name))
            if answer is not None:
                return answer(self, *args, **kwargs) if callable(answer) else answer
            return module.default_for(sigs[0].returns) if sigs else None

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        module: StrictTensorRT = object.__getattribute__(self, "_module")
        cls_name = object.__getattribute__(self, "_cls_name")
        attr = _lookup(object.__getattribute__(self, "_real_cls"), name)
        if not isinstance(attr, property):
            module._violate(MissingAttribute, f"tensorrt {module.__version__}: {cls_name} has no property {name!r}")
        if attr.fset is None:
            module._violate(MissingAttribute, f"tensorrt {module.__version__}: {cls_name}.{name} is read-only")
        sig = signatures_of(attr.fset)
        if sig and len(sig[0].params) >= 1 and not _matches(module, sig[0].params[-1].type, value):
            module._violate(
                BadCall,
                f"tensorrt {module.__version__}: {cls_name}.{name} = {_show(value)}: expected {sig[0].params[-1].type}",
            )
        module._record(cls_name, f"set:{name}", (value,), {})
        object.__getattribute__(self, "_state")[name] = value

    def __repr__(self) -> str:
        return f"<strict stand-in {object.__getattribute__(self, '_cls_name')}>"


def _show_args(args: tuple, kwargs: dict) -> str:
    return ", ".join([_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()])


def _lookup(real_cls: type, name: str) -> Any:
    for klass in real_cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _new_proxy(module: StrictTensorRT, name: str, real_cls: type) -> Proxy:
    proxy = object.__new__(Proxy)
    object.__setattr__(proxy, "_module", module)
    object.__setattr__(proxy, "_cls_name", name)
    object.__setattr__(proxy, "_real_cls", real_cls)
    object.__setattr__(proxy, "_state", {})
    return proxy


def _stand_in_class(module: StrictTensorRT, name: str, real_cls: type) -> Any:
    """A callable standing in for a real class: its constructor is checked against the real
    `__init__` signatures and returns a Proxy; class attributes are looked up on the real class."""

    class StandInClass:
        def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
            module._record(name, "__init__", args, kwargs)
            sigs = signatures_of(real_cls.__init__)
            if sigs and all(_bind(module, s, args, kwargs) is not None for s in sigs):
                module._violate(
                    BadCall,
                    f"tensorrt {module.__version__}: {name}({_show_args(args, kwargs)}) "
                    f"matches no constructor: {'; '.join(s.text for s in sigs)}",
                )
            return _new_proxy(module, name, real_cls)

        def __new_proxy__(self) -> Proxy:
            return _new_proxy(module, name, real_cls)

        def __getattr__(self, attr: str) -> Any:
            if not hasattr(real_cls, attr):
                module._violate(MissingAttribute, f"tensorrt {module.__version__}: {name} has no attribute {attr!r}")
            return getattr(real_cls, attr)

        def __repr__(self) -> str:
            return f"<strict stand-in class {name}>"

    return StandInClass()


class _EnumView:
    """A real enum class seen through the stand-in: its members are the real members, and asking
    for one the release lacks (getattr with a default included) is recorded as a violation."""

    def __init__(self, module: StrictTensorRT, name: str, real_enum: type) -> None:
        self._module, self._name, self._real = module, name, real_enum

    def __getattr__(self, member: str) -> Any:
        if member.startswith("__") or hasattr(self._real, member):
            return getattr(self._real, member)
        self._module._violate(
            MissingAttribute, f"tensorrt {self._module.__version__}: {self._name} has no member {member!r}"
        )
        return None

    def __call__(self, *args: Any) -> Any:
        return self._real(*args)

    def __repr__(self) -> str:
        return repr(self._real)


def _host_memory(module: StrictTensorRT, data: bytes) -> Any:
    """An IHostMemory stand-in: bytes (so the buffer protocol works as on the real object), with
    attribute access limited to the real IHostMemory's."""
    real_cls = module.real_class("IHostMemory")

    class HostMemory(bytes):
        def __getattribute__(self, name: str) -> Any:
            if not name.startswith("__") and _lookup(real_cls, name) is None:
                module._violate(
                    MissingAttribute, f"tensorrt {module.__version__}: IHostMemory has no attribute {name!r}"
                )
            if name == "nbytes":
                return len(self)
            return bytes.__getattribute__(self, name)

    return HostMemory(data)


def answer_sequence(values: list[Any]) -> Callable[..., Any]:
    """An answer that returns `values` one after the other (the last one repeats)."""
    remaining = list(values)

    def next_value(_self: Any, *args: Any, **kwargs: Any) -> Any:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return next_value
