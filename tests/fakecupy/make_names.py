"""Write tests/fakecupy/cupy/names.json from a real CuPy: what fakecupy lets code use.

    pip install cupy-cuda13x                  # no GPU needed: nothing here touches a device
    python tests/fakecupy/make_names.py > tests/fakecupy/cupy/names.json

For the module and for ndarray: the public names (dir), and the parameters of every function and
method, as the text of a Python signature with every default written as None (fakecupy checks
that a call binds, not what the defaults are). A signature comes from inspect where CuPy's
function is Python, else from the first line of its docstring, where Cython writes it; the C
types in it are dropped. Where neither gives a signature Python can parse (divmod's optional
outputs in brackets), the name maps to null and its calls are not checked.
"""
import inspect
import json
import re
import sys

sys.path.remove(sys.path[0])      # this script's folder, where the fake cupy is: the real one
import cupy  # noqa: E402

C_TYPE = re.compile(r"^(?:int|bool|Py_ssize_t|_ndarray_base|str|object)\s+(?=\w)")


def signature_text(function, method):
    """'(a, /, axis=None, *, out=None)' for function, or None; without self for a method."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        first_line = (function.__doc__ or "").strip().split("\n")[0].replace("\\*", "*")
        match = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", first_line)
        if match is None or "[" in match.group(1):
            return None
        pieces = [C_TYPE.sub("", piece.strip()) for piece in match.group(1).split(",")]
        try:
            scope = {}
            exec(f"def f({', '.join(p for p in pieces if p)}): pass", scope)
        except SyntaxError:
            return None
        parameters = list(inspect.signature(scope["f"]).parameters.values())
    if method and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    parameters = [p.replace(annotation=inspect.Parameter.empty,
                            default=inspect.Parameter.empty if p.default is inspect.Parameter.empty
                            else None) for p in parameters]
    return str(inspect.Signature(parameters))


def entries(owner, method):
    names = sorted(name for name in dir(owner) if not name.startswith("_"))
    signatures = {}
    for name in names:
        attribute = getattr(owner, name)
        if callable(attribute) and not isinstance(attribute, type):
            signatures[name] = signature_text(attribute, method)
    return names, signatures


def main():
    module, module_signatures = entries(cupy, method=False)
    methods, method_signatures = entries(cupy.ndarray, method=True)
    json.dump({"source": f"dir(cupy) and dir(cupy.ndarray) of CuPy {cupy.__version__} (public "
                         "names only), and their signatures (tests/fakecupy/make_names.py)",
               "module": module, "ndarray": methods,
               "module_signatures": module_signatures, "ndarray_signatures": method_signatures},
              sys.stdout, indent=0)
    print()


if __name__ == "__main__":
    main()
