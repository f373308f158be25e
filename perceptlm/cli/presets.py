"""``perceptlm presets``: every preset with its trainable parameters and perceptual tokens on given
backbones, or (``--markdown``) the four-axes table of the preset files."""

from __future__ import annotations

import argparse


def presets_table(encoder: str, llm: str) -> str:
    """Markdown table of every preset on the given backbones: trainable parameters, visual tokens."""
    from perceptlm import presets, zoo
    from perceptlm.model import PerceptualLM

    llm_module, encoder_module = zoo.load_llm(llm), zoo.load_encoder(encoder)  # each preset views them
    rows = ["| preset | trainable params | visual tokens | injection | LLM tuning | paper |", "|---|---:|---:|---|---|---|"]
    for name in presets.names():
        preset = presets.get(name)
        try:
            module = PerceptualLM.build(name, encoder_module, llm_module)
            count, tokens = f"{module.num_trainable_parameters:,}", str(module.num_visual_tokens)
        except ValueError as error:  # e.g. a layer selection this encoder cannot serve
            count, tokens = "n/a", f"({error})"
        rows.append(f"| {name} | {count} | {tokens} | {preset.injection} | {preset.llm_tuning} | {preset.paper} |")
    return "\n".join(rows)


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="perceptlm presets", description=(
        "Every preset with its trainable parameters and perceptual tokens on the given backbones, or "
        "(--markdown) the four-axes table of the preset files."))
    parser.add_argument("--encoder", default="test-tiny-vit", help="a zoo encoder name (default: %(default)s)")
    parser.add_argument("--llm", default="test-tiny-llama", help="a zoo LLM name (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="the four-axes table of the preset files")
    parser.add_argument("--write", metavar="FILE", help="with --markdown: replace the table in FILE")
    options = parser.parse_args(args)
    if options.markdown:
        from perceptlm import presets

        if options.write:
            changed = presets.write_table(options.write)
            print(f"{options.write}: {'table updated' if changed else 'table already current'}")
        else:
            print(presets.markdown_table())
        return
    print(presets_table(options.encoder, options.llm))
