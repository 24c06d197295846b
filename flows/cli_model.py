"""``dinoflow model ...``: convert backbone checkpoints between layouts and describe them.

    dinoflow model convert SRC DST --to hf [--from official]
    dinoflow model info CHECKPOINT [--json]

Layouts: ``dinoflow`` (our safetensors with arch metadata), ``official`` (facebookresearch/dinov2
``.pth`` state dict), ``hf`` (a ``transformers`` Dinov2Model directory). See pretrain/models/io.py.
Formats are told by content, not by suffix; a directory holding one checkpoint (such as
``assets/bootstrap-backbone/``) stands for that file. A path that holds no backbone is one line on
stderr and exit code 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Convert and inspect backbone checkpoints.", no_args_is_help=True)

LAYOUT_HELP = "dinoflow | official | hf"
SOURCE_HELP = "Checkpoint file, HF directory, or a directory holding one checkpoint."
# user errors: not a checkpoint, a mismatched one, an unwritable destination
USER_ERRORS = (ValueError, OSError)


@model_app.command()
def convert(
    src: Annotated[Path, typer.Argument(help=SOURCE_HELP)],
    dst: Annotated[
        Path,
        typer.Argument(
            help="Where to write: a file (.pt/.pth/.bin get torch.save's format, any other name "
            "the layout's own), or a directory for hf."
        ),
    ],
    to: Annotated[str, typer.Option("--to", help=f"Layout to write: {LAYOUT_HELP}.")],
    src_layout: Annotated[
        str | None, typer.Option("--from", help=f"Layout of SRC ({LAYOUT_HELP}); detected when omitted.")
    ] = None,
) -> None:
    """Rewrite a backbone checkpoint in another layout (strict load; mismatches are errors)."""
    from pretrain.models.io import convert as convert_checkpoint
    from pretrain.models.io import describe

    try:
        out = convert_checkpoint(src, dst, to=to, src_layout=src_layout)
        info = describe(out)  # read back: what was written loads
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"wrote {out} ({info['layout']}, {info['arch']}, {info['params']:,} parameters)")


@model_app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help=SOURCE_HELP)],
    layout: Annotated[
        str | None, typer.Option("--layout", help=f"{LAYOUT_HELP}; detected when omitted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Architecture, parameter count and layout of a backbone checkpoint."""
    from pretrain.models.io import describe

    try:
        summary = describe(checkpoint, layout)
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if as_json:
        typer.echo(json.dumps(summary))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f"{value:,} ({value / 1e6:.1f}M)" if key == "params" else value
        typer.echo(f"{key:<{width}}  {shown}")
