"""``flwr-tempered new APP [--strategy NAME] [--attack NAME]``: write a ready Flower app.

The app has the layout of Flower's own templates (what ``flwr new`` wrote up to Flower
1.24; from 1.41 on ``flwr new`` needs Flower's online platform)::

    APP/pyproject.toml          [tool.flwr.app]: publisher, components, config
    APP/README.md
    APP/PACKAGE/__init__.py
    APP/PACKAGE/task.py         Net, load_data, train, test (MNIST-5k, shipped, offline)
    APP/PACKAGE/client_app.py   ClientApp with @app.train / @app.evaluate
    APP/PACKAGE/server_app.py   ServerApp: strategy.start(...), final_model.pt saved

and differs from Flower's PyTorch template only where flwr-tempered comes in: the
ServerApp builds a robust strategy (one import and one line where the template has
``FedAvg``), and with ``--attack`` the ClientApp is wrapped by ``malicious_clientapp``
(one import and one line). Both lines are written with settings that fit the federation
the app is made for (``--supernodes``, 10 by default, all of them sampled every round,
20 % of them attackers), so the strategy's Byzantine budget check passes before round 1.

The number of SuperNodes is not written into ``pyproject.toml``: Flower 1.41 reads it from
``--federation-config "num-supernodes=N"`` (or the user's Flower configuration), and moves
a legacy ``[tool.flwr.federations]`` table out of the app's ``pyproject.toml`` into the
user's global Flower configuration on the first ``flwr run``. The command to run the app
is printed, and written at the top of its ``pyproject.toml`` and in its README.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import keyword
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

__all__ = [
    "ATTACK_FRACTION",
    "DEFAULT_ROUNDS",
    "DEFAULT_STRATEGY",
    "DEFAULT_SUPERNODES",
    "StrategyCode",
    "add_new_parser",
    "attack_statement",
    "create_app",
    "fitting_settings",
    "run_command",
    "run_new_command",
    "strategy_code",
]

#: The strategy written when ``--strategy`` is not given.
DEFAULT_STRATEGY = "median"
#: The federation the app's settings are made for, unless ``--supernodes`` says otherwise.
DEFAULT_SUPERNODES = 10
#: The written app's ``num-server-rounds``.
DEFAULT_ROUNDS = 3
#: The share of SuperNodes that run the attack (rounded to a whole number of SuperNodes).
ATTACK_FRACTION = 0.2
#: FLTrust's root data in the written app: a clean copy of the first of ten partitions.
_ROOT_TRAINER = '''

def train_on_root_data(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    """FLTrust's trusted update: the global model trained for one epoch on the server's
    root data set (a clean copy of the first of ten partitions)."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    root_data, _ = load_data(0, 10)
    train(model, root_data, 1, 0.05, "cpu")
    return ArrayRecord(model.state_dict())
'''
#: The rule parameters the written settings fill in when a rule requires them.
_REQUIRED_RULE_DEFAULTS: dict[str, Any] = {"c": 1.0, "tau": 1.0}
#: Rule settings written although the rule has defaults for them. BALANCE's defaults
#: (gamma 0.3, kappa 1) shrink its acceptance radius within a short run until no client's
#: model is accepted and the global model stays as it is; a constant radius (gamma 0.5,
#: kappa 0, the default run's BALANCE) keeps training (measured on the quickstart test app).
_RULE_SETTINGS: dict[str, dict[str, Any]] = {"balance": {"gamma": 0.5, "kappa": 0.0}}
#: The files of an app: template name -> path inside the app (PACKAGE: the package).
_FILES = {
    "pyproject.toml.tpl": "pyproject.toml",
    "README.md.tpl": "README.md",
    "__init__.py.tpl": "PACKAGE/__init__.py",
    "task.py.tpl": "PACKAGE/task.py",
    "client_app.py.tpl": "PACKAGE/client_app.py",
    "server_app.py.tpl": "PACKAGE/server_app.py",
}


class _Code(str):
    """A setting's value written as Python source (a name in the app), not as a literal."""


@dataclass(frozen=True)
class StrategyCode:
    """The source that builds a strategy in a ServerApp's ``main``.

    Attributes:
        imports: the import lines (Flower's or flwr-tempered's).
        task_names: what the code uses from the app's ``task`` module (``Net``,
            ``load_data`` and ``train`` for FLTrust's root trainer, else nothing).
        helpers: module-level definitions it calls (FLTrust's root trainer), or ``""``.
        statement: ``strategy = <constructor call>``; it reads the variables
            ``fraction_train`` and ``num_rounds`` of ``main``, and its continuation lines
            are indented for a statement at the first level of a function body.
        summary: what it builds, in words (for comments and the README).
    """

    imports: tuple[str, ...]
    task_names: tuple[str, ...]
    helpers: str
    statement: str
    summary: str


# ------------------------------------------------------------------------------ settings
def _budget(attackers: int, most: int) -> int:
    """The Byzantine budget: the number of attackers, capped at what the clients allow."""
    return max(0, min(attackers, most))


def fitting_settings(name: str, sampled: int, attackers: int) -> dict[str, Any]:
    """Keyword arguments of strategy ``name`` (besides ``FedAvg``'s) that fit ``sampled``
    clients per round with ``attackers`` of them Byzantine: the budget is the number of
    attackers where the rule can aggregate that many, else the largest it can.

    For the named strategies these are constructor arguments in Flower's names; for a
    rule used through ``RobustFedAvg`` they are the rule's settings (under ``"rule"``).
    A value of type ``_Code`` is the name of something defined in the app.
    """
    from flwr_tempered.aggregators import available_rules, rule_parameters
    from flwr_tempered.strategies import SERVER_STRATEGIES, available_server_strategies

    if name not in available_server_strategies():
        what = ("has no server form (it is decentralized only: it needs each node's own "
                "model or data)" if name in available_rules() else "is unknown")
        raise ValueError(f"strategy {name!r} {what}; choose one of "
                         f"{', '.join(available_server_strategies())}")
    krum_budget = _budget(attackers, (sampled - 3) // 2)
    named: dict[str, dict[str, Any]] = {
        "krum": {"num_malicious_nodes": krum_budget},
        "multi_krum": {"num_malicious_nodes": krum_budget,
                       "num_nodes_to_select": max(1, sampled - 2 * krum_budget)},
        "bulyan": {"num_malicious_nodes": _budget(attackers, (sampled - 3) // 4)},
        "nnm": {"num_malicious_nodes": _budget(attackers, (sampled - 1) // 2)},
        "centered_clipping": {"tau": 1.0, "iterations": 3},
        "fltrust": {"root_train_fn": _Code("train_on_root_data")},
    }
    if name in SERVER_STRATEGIES:
        return named.get(name, {})
    rule: dict[str, Any] = {"name": name, **_RULE_SETTINGS.get(name, {})}
    for parameter, default in rule_parameters(name).items():
        if default is not inspect.Parameter.empty or parameter in rule:
            continue
        if parameter == "f":
            rule["num_malicious_nodes"] = _budget(attackers, (sampled - 1) // 2)
        elif parameter == "total_rounds":
            rule["total_rounds"] = _Code("num_rounds")
        elif parameter in _REQUIRED_RULE_DEFAULTS:
            rule[parameter] = _REQUIRED_RULE_DEFAULTS[parameter]
        else:
            raise ValueError(f"strategy {name!r}: no setting is known for its required "
                             f"parameter {parameter!r}; write the app with another strategy "
                             "and set RobustFedAvg's rule by hand")
    return {"rule": rule}


# -------------------------------------------------------------------------------- source
def _literal(value: Any) -> str:
    """``value`` as Python source: strings in double quotes, ``_Code`` as it is."""
    if isinstance(value, _Code):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' * (len(value) == 1)})"
    return repr(value)


def _call(target: str, function: str, arguments: list[str], indent: str = "") -> str:
    """``target = function(arguments)`` at ``indent``: on one line if it fits 100 columns,
    else one argument a line (continuation lines indented for ``indent``)."""
    one_line = f"{target} = {function}({', '.join(arguments)})"
    if len(indent) + len(one_line) <= 100:
        return one_line
    inner = "".join(f"\n{indent}    {argument}," for argument in arguments)
    return f"{target} = {function}({inner}\n{indent})"


def strategy_code(name: str, *, sampled: int = DEFAULT_SUPERNODES,
                  attackers: int | None = None) -> StrategyCode:
    """The source that builds strategy ``name`` for ``sampled`` clients per round, of which
    ``attackers`` (default: :data:`ATTACK_FRACTION` of them) are Byzantine.

    ``fedavg`` is Flower's ``FedAvg``; a named strategy is its flwr-tempered class; any
    other registered rule is ``RobustFedAvg`` with that rule. Unknown names raise
    ``ValueError`` listing the valid ones.
    """
    from flwr_tempered import strategies

    if attackers is None:
        attackers = round(ATTACK_FRACTION * sampled)
    settings = fitting_settings(name, sampled, attackers)
    arguments = ["fraction_train=fraction_train"]
    if "rule" in settings:
        cls_name, module = "RobustFedAvg", "flwr_tempered.strategies"
        arguments.insert(0, _literal(settings["rule"]))
        summary = f"RobustFedAvg with the {name} rule"
    else:
        cls = strategies.SERVER_STRATEGIES[name]
        cls_name = cls.__name__
        module = ("flwr.serverapp.strategy" if cls.__module__.startswith("flwr.")
                  else "flwr_tempered.strategies")
        if module == "flwr_tempered.strategies" and not hasattr(strategies, cls_name):
            raise ValueError(f"strategy {name!r}: class {cls_name} is not exported by "
                             "flwr_tempered.strategies")
        arguments += [f"{key}={_literal(value)}" for key, value in settings.items()]
        summary = (f"Flower's {cls_name}" if module.startswith("flwr.")
                   else f"{cls_name} (flwr-tempered)")
    uses_root = any(isinstance(v, _Code) and v == "train_on_root_data" for v in settings.values())
    return StrategyCode(imports=(f"from {module} import {cls_name}",),
                        task_names=("Net", "load_data", "train") if uses_root else (),
                        helpers=_ROOT_TRAINER if uses_root else "",
                        statement=_call("strategy", cls_name, arguments, "    "),
                        summary=summary)


def _keep_model(server_round: int, arrays: Any) -> Any:
    """A root trainer that trains nothing: FLTrust's stand-in when only its rule is read."""
    return arrays


def _rule_spec(name: str, sampled: int, attackers: int) -> dict[str, Any]:
    """The rule strategy ``name`` applies to ``sampled`` clients, as a literal mapping in
    the rule's own parameter names (what ``malicious_clientapp(rule=...)`` takes)."""
    from flwr.serverapp.strategy import FedAvg

    from flwr_tempered.strategies import SERVER_STRATEGIES, RobustFedAvg

    # The names a setting may refer to in the app, as the app's defaults give them.
    stand_ins = {"num_rounds": DEFAULT_ROUNDS, "train_on_root_data": _keep_model}

    def value(setting: Any) -> Any:
        return stand_ins[str(setting)] if isinstance(setting, _Code) else setting

    settings = fitting_settings(name, sampled, attackers)
    strategy: FedAvg
    if "rule" in settings:
        strategy = RobustFedAvg({k: value(v) for k, v in settings["rule"].items()})
    else:
        strategy = SERVER_STRATEGIES[name](**{k: value(v) for k, v in settings.items()})
    if not isinstance(strategy, RobustFedAvg):
        return {"name": "mean"}  # Flower's FedAvg
    spec = _without_defaults(strategy.rule_for_round(sampled).config())
    try:
        written = ast.literal_eval(_literal(spec)) == spec
    except (ValueError, SyntaxError):
        written = False
    if not written:
        raise ValueError(f"strategy {name!r}: its rule {spec!r} cannot be written into the "
                         "ClientApp for an attack that runs the server's rule; choose another "
                         "strategy or attack")
    return spec


def _without_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's ``config()`` without the settings that equal the rule's defaults."""
    from flwr_tempered.aggregators import rule_parameters

    defaults = rule_parameters(str(config["name"]))
    kept: dict[str, Any] = {"name": config["name"]}
    for key, value in config.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if key == "name" or value == default or (
                isinstance(value, Mapping) and dict(value) == {"name": default}):
            continue
        kept[key] = _without_defaults(value) if isinstance(value, Mapping) else value
    return kept


def attack_statement(attack: str, strategy: str, *, sampled: int = DEFAULT_SUPERNODES,
                     attackers: int | None = None) -> str:
    """The line that wraps the ClientApp ``app`` so that :data:`ATTACK_FRACTION` of the
    SuperNodes run ``attack``; attacks that run the server's rule get the rule that
    ``strategy`` applies to ``sampled`` clients. Unknown attacks raise ``ValueError``
    listing the valid ones."""
    from flwr_tempered.attacks import attack_class, available_attacks

    if attack not in available_attacks():
        raise ValueError(f"unknown attack {attack!r}; choose 'none' or one of "
                         f"{', '.join(available_attacks())}")
    if attackers is None:
        attackers = round(ATTACK_FRACTION * sampled)
    arguments = ["app", _literal(attack), f"fraction={ATTACK_FRACTION}"]
    if getattr(attack_class(attack), "needs_rule", False):
        arguments.append(f"rule={_literal(_rule_spec(strategy, sampled, attackers))}")
    return _call("app", "malicious_clientapp", arguments)


# ---------------------------------------------------------------------------------- app
def _package_name(app_name: str) -> str:
    """The Python package of app ``app_name``, or ``ValueError`` saying why the name does
    not do (Flower's rules for app names, and no clash with an importable module)."""
    from flwr.supercore.utils import is_valid_name

    valid, reason = is_valid_name(app_name)
    if not valid:
        raise ValueError(f"invalid app name {app_name!r}: {reason} (Flower's rule for app "
                         "names), e.g. 'my-robust-app'")
    package = app_name.lower().replace("-", "_")
    if keyword.iskeyword(package):
        raise ValueError(f"invalid app name {app_name!r}: its package {package!r} is a Python "
                         "keyword; choose another name")
    if importlib.util.find_spec(package) is not None:
        raise ValueError(f"invalid app name {app_name!r}: its package {package!r} would "
                         "shadow the installed module of that name; choose another name")
    return package


def _template(name: str) -> Template:
    source = resources.files("flwr_tempered.experiments").joinpath("app_template", name)
    return Template(source.read_text(encoding="utf-8"))


def _isort_key(name: str) -> tuple[bool, str]:
    """Classes before functions, then by name (the order isort and ruff write)."""
    return not name[:1].isupper(), name.lower()


def _comment(text: str, indent: str) -> str:
    """``text`` as ``#`` comment lines at ``indent``, within 92 columns."""
    return textwrap.fill(text, 92, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ")


def run_command(path: Path | str, supernodes: int = DEFAULT_SUPERNODES) -> str:
    """The shell command that runs the app at ``path`` offline on Flower's simulation
    engine with ``supernodes`` SuperNodes."""
    return (f"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run {path} --stream "
            f'--federation-config "num-supernodes={supernodes}"')


def create_app(path: Path | str, strategy: str = DEFAULT_STRATEGY, attack: str | None = None,
               *, supernodes: int = DEFAULT_SUPERNODES,
               publisher: str = "flwr-tempered") -> Path:
    """Write a Flower app at ``path`` (its last part is the app's name) with ``strategy``
    in place of ``FedAvg`` and, unless ``attack`` is ``None`` or ``"none"``, the ClientApp
    wrapped so that :data:`ATTACK_FRACTION` of the SuperNodes run ``attack``.

    The strategy's settings fit ``supernodes`` SuperNodes, all sampled every round.
    Returns the app's folder. Raises ``ValueError`` (nothing written) for an invalid app
    name, a ``path`` that exists and is not an empty folder, an unknown strategy or
    attack, or fewer than one SuperNode.
    """
    import flwr

    app = Path(path)
    package = _package_name(app.name)
    if isinstance(supernodes, bool) or not isinstance(supernodes, int) or supernodes < 1:
        raise ValueError(f"supernodes must be an integer >= 1, got {supernodes!r}")
    if app.exists() and (not app.is_dir() or any(app.iterdir())):
        raise ValueError(f"{app} already exists and is not an empty folder; choose a new "
                         "path or remove it first")
    attackers = round(ATTACK_FRACTION * supernodes)
    code = strategy_code(strategy, sampled=supernodes, attackers=attackers)
    attacking = attack not in (None, "none")
    if attacking and attackers == 0:
        raise ValueError(f"attack {attack!r}: {ATTACK_FRACTION:.0%} of {supernodes} SuperNodes "
                         "rounds to no attacker; make the app for at least 3 SuperNodes")
    statement = (attack_statement(str(attack), strategy, sampled=supernodes,
                                  attackers=attackers) if attacking else "")
    attack_summary = (f"{attack} on {ATTACK_FRACTION:.0%} of the SuperNodes ({attackers} of "
                      f"{supernodes}), through malicious_clientapp" if attacking
                      else "none (every SuperNode is honest)")
    values = {
        "app_name": app.name,
        "package": package,
        "publisher": publisher,
        "flwr_version": flwr.__version__,
        "supernodes": str(supernodes),
        "rounds": str(DEFAULT_ROUNDS),
        "strategy_summary": code.summary,
        "strategy_line": (f"{code.summary}, in place of Flower's `FedAvg` (one import and one "
                          f"line in `{package}/server_app.py`)" if strategy != "fedavg" else
                          "Flower's `FedAvg`, not robust (the baseline to compare with)"),
        "header": "\n".join((
            f"# {app.name}: a Flower app written by `flwr-tempered new`.",
            _comment(f"Strategy: {code.summary}.", ""),
            _comment(f"Attack: {attack_summary}.", ""))),
        "strategy_imports": "".join(f"\n{line}" for line in code.imports),
        "strategy_statement": code.statement,
        "server_doc": textwrap.fill(
            f"{app.name}: the ServerApp: Flower's ``strategy.start`` loop with "
            f"{code.summary} in place of ``FedAvg``; the global model is scored on the "
            "test set after every round and saved at the end.", 92),
        "task_names": ", ".join(sorted({"Net", "load_centralized_data", "test",
                                        *code.task_names}, key=_isort_key)),
        "helpers": code.helpers,
        "attack_summary": attack_summary,
        "attack_doc": ("\n\n" + textwrap.fill(
            f"With flwr-tempered's ``malicious_clientapp`` around it, {ATTACK_FRACTION:.0%} "
            f"of the SuperNodes run the {attack} attack (the last line).", 92)
            if attacking else ""),
        "attack_import": ("\nfrom flwr_tempered.clients import malicious_clientapp"
                          if attacking else ""),
        "attack_block": ("\n\n\n" + _comment(
            f"flwr-tempered: {ATTACK_FRACTION:.0%} of the SuperNodes (chosen by partition id) "
            f"run the {attack} attack; remove this line for an honest federation.", "")
            + f"\n{statement}" if attacking else ""),
        "strategy_comment": _comment(
            f"flwr-tempered: {code.summary} in place of Flower's FedAvg" if strategy != "fedavg"
            else "Flower's own FedAvg: not robust, the baseline to compare with", "    "),
    }
    rendered = {target.replace("PACKAGE", package): _template(source).substitute(values)
                for source, target in _FILES.items()}
    for relative, text in rendered.items():
        target = app / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return app


# ---------------------------------------------------------------------------------- CLI
def add_new_parser(commands: Any) -> None:
    """Register ``flwr-tempered new``."""
    new = commands.add_parser(
        "new", help="write a ready Flower app with a robust strategy (and an attack)",
        description="Write a Flower app in the layout of Flower's templates (pyproject.toml, "
                    "task, ClientApp, ServerApp) on the shipped MNIST-5k data, with a robust "
                    "strategy in place of FedAvg and optionally an attack on 20%% of the "
                    "SuperNodes; it runs offline with `flwr run APP`.")
    new.add_argument("app", metavar="APP",
                     help="the folder to create; its name is the app's name (letters, digits "
                          "and hyphens, starting with a letter)")
    new.add_argument("--strategy", default=DEFAULT_STRATEGY,
                     help=f"a server strategy (default {DEFAULT_STRATEGY}; see "
                          "flwr_tempered.strategies.available_server_strategies)")
    new.add_argument("--attack", default="none",
                     help="'none' (default) or an attack name (see `flwr-tempered list attacks`)")
    new.add_argument("--supernodes", type=int, default=DEFAULT_SUPERNODES,
                     help="the number of SuperNodes the strategy's settings are made for "
                          f"(default {DEFAULT_SUPERNODES})")


def run_new_command(args: argparse.Namespace) -> int:
    """Write the app ``args`` describe and print how to run it; ``ValueError`` on bad input."""
    app = create_app(args.app, args.strategy, args.attack, supernodes=args.supernodes)
    print(f"Wrote the Flower app {app.name!r} to {app} (strategy {args.strategy}, attack "
          f"{args.attack}, settings for {args.supernodes} SuperNodes).")
    print("Run it offline on Flower's simulation engine:")
    print(f"  {run_command(app, args.supernodes)}")
    sys.stdout.flush()
    return 0
