"""A module's top-level constants read from its source, without importing it.

The data layers (layers/*.py) hold each dataset's class names and means, and import Caffe:
a process without Caffe (inference on OpenCV or ONNX Runtime) reads those literals here.
Standard library only.
"""
import ast
import importlib.util


def module_constant(module, name):
    """The value of `name = <literal>` (or `name = np.array(<literal>, ...)`) at the top
    of `module`'s source; None where the module or such an assignment is not found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith('.py'):
        return None
    try:
        with open(spec.origin, encoding='utf-8') as f:
            tree = ast.parse(f.read(), spec.origin)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == name
                for target in statement.targets):
            value = statement.value
            if isinstance(value, ast.Call) and value.args:
                value = value.args[0]
            try:
                return ast.literal_eval(value)
            except ValueError:
                return None
    return None
