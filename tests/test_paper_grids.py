"""The DePALM main-table grid (experiments/paper/depalm): the committed commands and W&B sweeps are
what the generator writes, cover exactly the table's cells, refer to configs that exist, and parse
with the real CLI; a sweep agent's command runs the same cell as commands.txt."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
GRID = ROOT / "experiments" / "paper" / "depalm"
# The table's rows and columns (DePALM main table; Score averages the 10 benchmark columns).
ROWS = ["limber-1", "limber-all", "mapl", "epalm", "depalm-qp-l0", "depalm-qp-inner", "depalm-r-avgpool",
        "depalm-r-linear", "depalm-r-qpmapper", "depalm-r-rand", "depalm-c-attn"]
COLUMNS = {("coco_karpathy", 1.0), ("coco_karpathy", 0.01), ("vqav2", 1.0), ("vqav2", 0.01), ("textcaps", 1.0),
           ("textvqa", 1.0), ("okvqa", 1.0), ("aokvqa", 1.0), ("audiocaps", 1.0), ("msrvtt", 1.0)}
SEEDS = {0, 1, 2, 3, 4}


def load_grid():
    spec = importlib.util.spec_from_file_location("depalm_grid", GRID / "grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


def command_lines() -> list[str]:
    return [line for line in (GRID / "commands.txt").read_text().splitlines() if line and not line.startswith("#")]


@functools.cache
def parsed_lines() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Every line of commands.txt as (fit arguments, test arguments), split once."""
    return tuple(tuple(map(tuple, parse_line(line))) for line in command_lines())


def option(args, name: str) -> str:
    return args[args.index(name) + 1]


def parse_line(line: str) -> tuple[list[str], list[str]]:
    """``perceptlm fit ... && perceptlm test ...`` -> the two argument lists (after ``perceptlm``)."""
    words = shlex.split(line)
    split = words.index("&&")
    fit, test = words[:split], words[split + 1 :]
    assert fit[:2] == ["perceptlm", "fit"] and test[:2] == ["perceptlm", "test"], line[:120]
    return fit[1:], test[1:]


def cell_of(args: list[str]) -> tuple[str, str, float, int]:
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    mechanism = re.fullmatch(r"experiments/configs/mechanisms/(.+)\.yaml", configs[0]).group(1)
    dataset = re.fullmatch(r"experiments/configs/data/(.+)\.yaml", configs[1]).group(1)
    assert configs[2] == "experiments/configs/trainer/gpu.yaml"
    fraction = option(args, "--data.init_args.fraction")
    seed = int(option(args, "--seed_everything"))
    assert int(option(args, "--data.init_args.seed")) == seed
    return mechanism, dataset, 1.0 if fraction == "null" else float(fraction), seed


def test_generator_is_deterministic_and_committed_output_is_current(tmp_path):
    grid = load_grid()
    first, second = grid.write(tmp_path / "a"), grid.write(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    for path in first:
        relative = path.relative_to(tmp_path / "a")
        assert path.read_text() == (tmp_path / "b" / relative).read_text(), f"{relative} differs between two runs"
        committed = GRID / relative
        assert committed.is_file() and committed.read_text() == path.read_text(), (
            f"{committed} is not what the generator writes: run python experiments/paper/depalm/grid.py write")
    assert {p.name for p in (GRID / "sweeps").glob("*.yaml")} == {p.name for p in first if p.parent.name == "sweeps"}


def test_recipes_read_the_released_scripts_as_hydra_composes_them(monkeypatch):
    """Config groups first, value overrides win wherever they stand; the config defaults fill the
    rest; an override the generator does not interpret is an error, never silently dropped."""
    grid = load_grid()
    r = grid.recipe("audiocaps", "depalm-c-attn")  # "...accumulate_steps=4 ... mod=cross_attn"
    assert (r.batch_size, r.accumulation, r.clip, r.lr, r.llm, r.feat_model) == (4, 4, 0.05, 8e-4, "opt", "clap")
    r = grid.recipe("vqav2-1pct", "depalm-c-attn")
    assert (r.batch_size, r.accumulation, r.clip, r.lr, r.epochs, r.fraction) == (16, 2, 0.1, 4e-3, 30, 0.01)
    r = grid.recipe("msrvtt", "depalm-c-attn")  # no released script: the column's overrides + the config defaults
    assert not r.released and (r.llm, r.feat_model, r.accumulation, r.clip, r.prompt_tokens) == ("llama", "timesformer", 2, 0.05, 16)
    r = grid.recipe("coco-1pct", "depalm-r-qpmapper")
    assert r.mapper_layers == 1 and r.checks == {"mode": "qpmapper", "width": 768} and r.prompt_tokens == 1
    assert grid.recipe("coco", "limber-1").checks == {"width": None, "tokens": "cls"}
    assert all(not grid.mismatches(c, m) for c in grid.COLUMNS for m in grid.MECHANISMS)
    monkeypatch.setitem(grid.SCRIPTS["coco"], "mapl", "dataset=coco experiment=mapl training.warmup=3")
    with pytest.raises(ValueError, match="coco / mapl: the override 'training.warmup=3' is not interpreted"):
        grid.recipe("coco", "mapl")


def test_commands_cover_exactly_the_table():
    lines = parsed_lines()
    assert len(lines) == len(ROWS) * len(COLUMNS) * len(SEEDS) == 550
    cells, run_dirs, groups = [], set(), {}
    for fit, test in lines:
        cell = cell_of(fit)
        assert cell_of(test) == cell  # the test scores the same configuration
        cells.append(cell)
        run_dir = option(fit, "--trainer.default_root_dir")
        assert option(test, "--trainer.default_root_dir") == run_dir == option(fit, "--trainer.logger.init_args.save_dir")
        assert option(test, "--ckpt_path") == option(fit, "--trainer.callbacks.dirpath") + "/last.ckpt"
        assert option(fit, "--trainer.callbacks.save_last") == "true"
        assert option(fit, "--trainer.logger.init_args.group") == option(test, "--trainer.logger.init_args.group")
        assert option(fit, "--model.init_args.llm") == option(test, "--model.init_args.llm")
        run_dirs.add(run_dir)
        groups.setdefault(option(fit, "--trainer.logger.init_args.group"), set()).add(cell[3])
    expected = {(m, d, f, s) for m, (d, f), s in itertools.product(ROWS, COLUMNS, SEEDS)}
    assert len(cells) == len(set(cells)) and set(cells) == expected
    assert len(run_dirs) == len(lines)  # one run directory per cell
    # one W&B group for the whole grid (its comparison workspace groups runs by the `cell` config field)
    assert list(groups) == ["depalm"] and groups["depalm"] == SEEDS


def test_referenced_configs_exist():
    paths = {p for line in parsed_lines() for args in line
             for p in (args[i + 1] for i, a in enumerate(args) if a == "--config")}
    for relative in sorted(paths):
        path = ROOT / relative
        assert path.is_file(), f"{relative} is referenced by commands.txt but does not exist"
        config = yaml.safe_load(path.read_text())
        if "/mechanisms/" in relative:
            assert config["model"]["init_args"]["preset"] == path.stem
        if "/data/" in relative:
            assert config["data"]["class_path"].startswith("perceptlm.data.")


def test_sweeps_are_wandb_grid_sweeps_that_run_the_same_cells(capsys):
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    grid, lines = load_grid(), parsed_lines()
    by_cell = {cell_of(fit): (list(fit), list(test)) for fit, test in lines}
    total = 0
    for path in sorted((GRID / "sweeps").glob("*.yaml")):
        config = sweep_utils.load_sweep_config(str(path))
        assert config["method"] == "grid" and (ROOT / config["program"]).is_file()
        assert "${program}" in config["command"] and "${args}" in config["command"]
        values = {name: spec["values"] for name, spec in config["parameters"].items()}
        combos = list(itertools.product(*values.values()))
        total += len(combos)
        dataset = path.stem
        assert len(combos) == sum(1 for cell in by_cell if cell[1] == dataset)
        # The command a W&B agent builds (wandb_agent.Agent._command_run), for one combination.
        first = dict(zip(values, combos[-1]))
        macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in first.items()}})
        macros.update(interpreter=["python"], program=[config["program"]], env=["/usr/bin/env"])
        argv = []
        for word in sweep_utils.create_sweep_command(config["command"]):
            argv += macros.get(word[2:-1], []) if word.startswith("${") else [word]
        assert argv[:3] == ["/usr/bin/env", "python", config["program"]]
        capsys.readouterr()
        assert grid.main([*argv[3:], "--dry-run"]) == 0
        printed = [shlex.split(x) for x in capsys.readouterr().out.splitlines()]
        cell = (first["mechanism"], dataset, float(first["fraction"]), int(first["seed"]))
        assert [p[3:] for p in printed] == list(by_cell[cell])  # after "python -m perceptlm.cli"
    assert total == len(lines)


def test_commands_parse_with_the_real_cli(capsys):
    """Ten cells that between them cover every mechanism and every benchmark (whose data config
    exists) through the real parser; ``--print_config`` exits before anything is loaded."""
    from perceptlm.cli import cli

    by_cell = {cell_of(fit): (list(fit), list(test)) for fit, test in parsed_lines()}
    present = [c for c in sorted(COLUMNS) if (ROOT / "experiments/configs/data" / f"{c[0]}.yaml").exists()]
    assert present, "no data config of the table is present"
    chosen = [by_cell[(m, *present[i % len(present)], 1)] for i, m in enumerate(ROWS)]
    chosen += [v for c, v in by_cell.items() if c[3] == 1 and c[1:3] in present  # cell-specific arguments
               and "--model.init_args.features" in v[0]]
    for index, (fit, test) in enumerate(chosen):
        for args in (fit, test) if index < 2 else (fit,):
            with pytest.raises(SystemExit) as exit_info:
                cli([*args, "--print_config"])
            assert exit_info.value.code in (0, None)
            printed = yaml.safe_load(capsys.readouterr().out)
            mechanism, dataset, fraction, seed = cell_of(args)
            model, data, trainer = printed["model"]["init_args"], printed["data"]["init_args"], printed["trainer"]
            assert model["preset"] == mechanism and model["llm"] == option(args, "--model.init_args.llm")
            assert model["encoder"] == option(args, "--model.init_args.encoder")
            if "--model.init_args.features" in args:
                assert model["features"] == yaml.safe_load(option(args, "--model.init_args.features"))
            assert data["fraction"] == (None if fraction == 1.0 else fraction) and data["seed"] == seed
            assert printed["seed_everything"] == seed and trainer["accelerator"] == "gpu"
            assert trainer["logger"]["init_args"]["group"] == option(args, "--trainer.logger.init_args.group")
            if args[0] == "fit":
                assert trainer["max_epochs"] == int(option(args, "--trainer.max_epochs"))
                assert trainer["callbacks"][-1]["init_args"]["save_last"] is True


# -- the instruction-tuning comparison (experiments/paper/instruction) ------------------------------
@pytest.fixture(scope="module")
def grid():
    """experiments/paper/instruction/grid.py as a module."""
    spec = importlib.util.spec_from_file_location("instruction_grid", ROOT / "experiments/paper/instruction/grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_instruction_grid_is_current_and_parses(grid, tmp_path, capsys):
    """Committed commands are what the generator writes; every system's three commands (align fit,
    instruct fit from the align checkpoint, test with the blind baseline) parse with the real CLI."""
    from perceptlm.cli import cli

    committed = (ROOT / "experiments/paper/instruction/commands.txt").read_text()
    assert grid.write(tmp_path).read_text() == committed
    cells = grid.cells()
    assert set(grid.SYSTEMS_OF) <= set(grid.VARIANTS) and len(cells) == len(set(cells)) == 105
    runs = {(cell.system, cell.variant) for cell in cells}
    # the comparison (every system, its own recipe and the reasoned one) and the ablations of LLaVA
    assert {(system, variant) for system in grid.SYSTEMS for variant in ("default", "reasoned")} <= runs
    assert {("llava", v) for name in grid.STUDY_ABLATIONS for v in (name, f"reasoned-{name}")} <= runs
    order = [(cell.system, cell.variant) for cell in cells]
    for variant in {variant for system, variant in runs if system == "minigpt4"}:
        assert order.index(("blip2", variant)) < order.index(("minigpt4", variant))
    for system in grid.SYSTEMS:
        align, instruct, test = grid.stage_commands(grid.Cell(system, "default", 0))
        assert option(instruct, "--model.init_args.init_from") == f"{grid.Cell(system, 'default', 0).run_dir}/align/checkpoints/last.ckpt"
        for args, stage in ((align, "align"), (instruct, "instruct"), (test, "instruct")):
            with pytest.raises(SystemExit) as exit_info:
                cli([*args, "--print_config"])
            assert exit_info.value.code in (0, None)
            printed = yaml.safe_load(capsys.readouterr().out)
            assert printed["model"]["init_args"]["preset"] == system and printed["model"]["init_args"]["stage"] == stage
            assert printed["data"]["init_args"]["family"] == ("caption" if args is align else "all")
            # a fully tuned LLM's stage-2 rate is scaled to the budget; the other recipes keep theirs
            scaled = float(grid.LLM_LR[system]) if system in grid.LLM_LR and args is not align else None
            assert printed["model"]["init_args"]["llm_lr"] == scaled
        assert printed["model"]["init_args"]["eval_blind"] is True
    for variant, rate in (("paper-lr", 2e-5), ("llm-lora", 2e-4)):  # a variant's rate wins over the scaled one
        with pytest.raises(SystemExit):
            cli([*grid.stage_commands(grid.Cell("llava", variant, 0))[1], "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["llm_lr"] == rate
    for variant, families in (("yesno-reasoned", ["yesno"]), ("reasoned", True), ("default", False),
                              ("reasoned-llm-frozen", True), ("reasoned-instruct-10pct", True)):
        with pytest.raises(SystemExit):
            cli([*grid.stage_commands(grid.Cell("llava", variant, 0))[1], "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["reasoned"] == families
    # reasoned-itc: the contrastive loss in the alignment stage only; MiniGPT-4 freezes the Q-Former
    # BLIP-2 aligned the same way (the default's where a variant leaves the alignment alone)
    for variant, stages in (("reasoned-itc", (1.0, 0.0)), ("reasoned", (0.0, 0.0))):
        commands = grid.stage_commands(grid.Cell("blip2", variant, 0))
        for args, weight in zip(commands[:2], stages):
            with pytest.raises(SystemExit):
                cli([*args, "--print_config"])
            assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["itc_weight"] == weight
        source = "reasoned-itc" if variant == "reasoned-itc" else "default"
        align = grid.stage_commands(grid.Cell("minigpt4", variant, 0))[0]
        last = len(align) - 1 - align[::-1].index("--model.init_args.connector")  # it follows the scale's
        connector = json.loads(align[last + 1])
        assert connector["init_from"] == f"runs/instruction/blip2-{source}/seed0/align/checkpoints/last.ckpt"
    # A data amount is the number of records a stage sees (its steps), and nothing else changes.
    for variant, stage, share in (("instruct-10pct", 1, 0.1), ("instruct-400pct", 1, 4.0), ("align-10pct", 0, 0.1),
                                  ("align-400pct", 0, 4.0)):
        changed = grid.stage_commands(grid.Cell("llava", variant, 0))
        default = grid.stage_commands(grid.Cell("llava", "default", 0))
        steps = (grid.ALIGN_STEPS, grid.INSTRUCT_STEPS)[stage]
        assert option(changed[stage], "--trainer.max_steps") == str(round(steps * share)) != str(steps)
        same = [a.replace(f"llava-{variant}", "llava-default") for a in changed[stage]]
        same[same.index("--trainer.max_steps") + 1] = str(steps)
        assert same == default[stage]
    # The larger budget on the reasoned recipe: the same alignment, four times the instruction steps.
    def flat(variant):  # the three commands as one list, the variant's name in folders and groups masked
        return [a.replace(f"blip2-{variant}", "blip2-V") for args in grid.stage_commands(grid.Cell("blip2", variant, 0))
                for a in args]

    larger, reasoned = flat("reasoned-instruct-400pct"), flat("reasoned")
    steps = [i + 1 for i, a in enumerate(reasoned) if a == "--trainer.max_steps"]
    assert [larger[i] for i in steps] == [str(grid.ALIGN_STEPS), str(4 * grid.INSTRUCT_STEPS)]
    assert [r if i in steps else a for i, (a, r) in enumerate(zip(larger, reasoned))] == reasoned
    # The study's ablations on the reasoned recipe: the same runs, with reasoned instruction answers.
    for name in grid.STUDY_ABLATIONS:
        ablation = grid.stage_commands(grid.Cell("llava", name, 0))
        align, instruct, test = ([a.replace(f"llava-reasoned-{name}", f"llava-{name}") for a in args]
                                 for args in grid.stage_commands(grid.Cell("llava", f"reasoned-{name}", 0)))
        assert align == ablation[0]
        for args, plain in ((instruct, ablation[1]), (test, ablation[2])):
            at = args.index("--data.init_args.reasoned")
            assert args[at + 1] == "true" and args[:at] + args[at + 2:] == plain


def test_instruction_grid_run_skips_a_trained_stage(grid, tmp_path, monkeypatch, capsys):
    """Re-running a cell does not train again a stage whose last.ckpt exists (a resumed grid)."""
    monkeypatch.chdir(tmp_path)
    cell = grid.Cell("llava", "default", 0)
    assert grid.run(cell, dry_run=True) == 0
    assert "skipped" not in capsys.readouterr().out
    (tmp_path / cell.run_dir / "align" / "checkpoints").mkdir(parents=True)
    (tmp_path / cell.run_dir / "align" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert grid.run(cell, dry_run=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.startswith("skipped") for line in lines] == [True, False, False]
    assert "--data.init_args.family caption" in lines[0] and lines[2].startswith("perceptlm test")
