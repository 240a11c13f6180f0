"""The model table the tools read: the reference table (models/specs.py) and the models a
user declared (models/user/*.json, models/declared.py), together.

    from models import registry
    table = registry.load()
    table.models      name -> ModelSpec: the reference, paper and toy nets and every
                      declared model's stages
    table.base_nets   name -> ModelSpec: the ILSVRC classifiers (deploy only)
    table.declared    the declared models (declared.DeclaredModel), in name order
    table.problems    the declarations that cannot be used (declared.Problem: the file,
                      why, what to do), a name clash with the reference table among them
    table.spec(name)  one model, or UnknownModel saying why there is none (the known
                      models, or the broken declaration of `name` and why it is broken)
    table.declared_model(name), table.family_of(stage), table.problem_for(name)

A broken declaration is a problem the tools report, never an error of `load`: the
reference table and every other declaration stay usable. `load(folder)` reads another
folder of declarations (as does FCN_USER_MODELS_DIR). Standard library only: the system
python3 writes the make rules from it.
"""
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from models import declared as declarations
from models import specs


class UnknownModel(LookupError):
    """No model has the name: the message lists the known models, or names the broken
    declaration that would declare it and why it cannot be used."""


@dataclass(frozen=True)
class Registry:
    models: MappingProxyType
    base_nets: MappingProxyType
    declared: tuple
    problems: tuple
    folder: Path

    def problem_for(self, name):
        """The broken declaration that would declare the model or family `name`, or None."""
        return next((problem for problem in self.problems if name in problem.names), None)

    def _unusable(self, name):
        problem = self.problem_for(name)
        return UnknownModel(problem.why_not(name)) if problem else None

    def spec(self, name):
        """The model `name` (a reference model or a declared model's stage)."""
        if name in self.models:
            return self.models[name]
        raise self._unusable(name) or UnknownModel(
            f'unknown model {name!r}; known models: {", ".join(sorted(self.models))}')

    def declared_model(self, name):
        """The declared model `name` (a family: its chain of stages)."""
        model = next((model for model in self.declared if model.name == name), None)
        if model is not None:
            return model
        known = ', '.join(model.name for model in self.declared) or 'none'
        raise self._unusable(name) or UnknownModel(
            f'no declared model {name!r} in {declarations.shown(self.folder)} (declared: '
            f'{known}); declare it with solve/new_model.py')

    def family_of(self, name):
        """The declared model whose stage `name` is, or None (a reference model)."""
        return next((model for model in self.declared
                     if any(stage.name == name for stage in model.stages)), None)


def load(folder=None):
    """The registry, with the declarations in `folder` (default: declared.user_dir()).
    Read again whenever a declaration file is added, removed or changed."""
    folder = Path(folder or declarations.user_dir())
    return _load(folder, _fingerprint(folder))


def _fingerprint(folder):
    """What a change of the folder's declarations changes: each file's name, time, size."""
    stamps = []
    for path in sorted(folder.glob('*.json')):
        try:
            status = path.stat()
        except OSError:
            continue  # removed between the listing and its stat
        stamps.append((path.name, status.st_mtime_ns, status.st_size))
    return tuple(stamps)


@lru_cache(maxsize=4)
def _load(folder, fingerprint):
    models, problems = declarations.read_all(folder, taken=set(specs.MODELS)
                                             | set(specs.BASE_NETS))
    table = dict(specs.MODELS)
    table.update({stage.name: stage for model in models for stage in model.stages})
    return Registry(MappingProxyType(table), MappingProxyType(dict(specs.BASE_NETS)),
                    models, problems, folder)
