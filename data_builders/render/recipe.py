"""The rendering recipe: everything that decides how a record becomes text, from build to serve.

`trajtune build` writes it into manifest.json (`"recipe"`), `train` copies it into the export's trajtune.json,
and the export's `chat_template` renders tools and calls the way training did (`export_chat_template`: the
prompt format and the profile's reshapings written in front of the template where the template alone would not
give the build's text for a client's messages), so `apply_chat_template`, vLLM and trajtune's own
chat / serve / eval / `hf:` policy prompt the model as it was trained. The generation engine reads it back with
`load_recipe(model_dir)`.

Fields: the prompt format; the call syntax (None: the template writes `tool_calls` itself); joint or per-turn
(as `--turns auto` decided for the template; records may still fall back one by one, see the manifest's
`turns`); the stop tokens (`template_stop_tokens`); template kwargs; the folds, i.e. the reshapings the template
needs that the profile measured (results as user turns merged for strict alternation, parallel calls split,
tools on the system turn); where reasoning went when the template has no place of its own for it ("inline":
`<think>...</think>` before the answer, in the content, which the exported template writes too; "drop"); and
the sha256 of the template the records were rendered with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrajtuneError

RECIPE_VERSION = 1


@dataclass(frozen=True)
class RenderRecipe:
    prompt_format: str | None = None
    call_syntax: str | None = None  # the syntax calls are written in as text; None: the template's own tool_calls
    turns: str = "joint"  # "joint" | "per-turn": how records of this template are rendered
    stop_tokens: list[str] = field(default_factory=list)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    folds: list[str] = field(default_factory=list)
    reasoning: str | None = None  # "inline" | "drop" | None (the template's own place for it, or none needed)
    template_sha256: str = ""  # of the chat template the records were rendered with
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> RenderRecipe:
        """The recipe written by `to_dict`; TrajtuneError naming `where` for anything else."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names or data.get("version") != RECIPE_VERSION:
            raise TrajtuneError(f"{where}: 'recipe' is not a trajtune rendering recipe of version {RECIPE_VERSION} "
                                f"(keys {sorted(data) if isinstance(data, dict) else type(data).__name__}); rebuild "
                                "the data with this trajtune, or export the model again")
        return cls(**data)


def build_recipe(tokenizer, prompt_format: str | None, turns: str, options=None,
                 reasoning_seen: bool = True) -> RenderRecipe:
    """The recipe of a build with `tokenizer` (its chat template), `--prompt-format` (resolved: not "auto"),
    `turns` ("joint" or "per-turn", auto already decided) and the render options (options.RenderOptions).
    `reasoning_seen`: whether any record has reasoning_content (where none has, `reasoning` stays None: the
    export then need not write it inline)."""
    from .options import RenderOptions
    from .shape import reasoning_placement
    from .stops import template_stop_tokens

    template, profile = _rendered_with(tokenizer, prompt_format)
    folds = []
    if profile is not None:
        folds += ["tools_in_system"] * (profile.tools_where in ("system_list", "system_string"))
        folds += ["tool_list_in_system"] * (profile.tools_where == "none" and profile.native_calls)
        folds += ["one_call_per_turn"] * profile.one_call_per_turn
        folds += ["strict_alternation"] * profile.strict_alternation
        folds += [f"tool_role_{profile.tool_role}"] * (profile.tool_role != "tool")
        folds += ["system_into_first_user"] * profile.system_fold
    syntax = profile.text_syntax if profile is not None and not profile.native_calls else None
    if options is not None and options.call_syntax:
        syntax = options.call_syntax
    kwargs = dict(options.template_kwargs) if options is not None else {}
    place = reasoning_placement(profile, options or RenderOptions()) if profile is not None else None
    return RenderRecipe(prompt_format=prompt_format, call_syntax=syntax, turns=turns,
                        stop_tokens=template_stop_tokens(tokenizer).tokens(), template_kwargs=kwargs, folds=folds,
                        reasoning=place if reasoning_seen and place in ("inline", "drop") else None,
                        template_sha256=hashlib.sha256(template.encode()).hexdigest())


def _rendered_with(tokenizer, prompt_format: str | None):
    """The chat template records are rendered with under `prompt_format` (resolved), and its profile (None
    without a template)."""
    from .profile import profile_template, special_kwargs
    from .prompt_formats import apply_prompt_format

    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if prompt_format is not None:
        template = apply_prompt_format({"messages": []}, prompt_format)[1] or template
    return template, profile_template(template, tuple(sorted(special_kwargs(tokenizer).items()))) if template else None


def reasoning_notice(tokenizer, prompt_format: str | None, options) -> str | None:
    """The line to print on stderr when --reasoning auto writes reasoning inline because the template (under
    `prompt_format`, resolved) has no place for it; None otherwise."""
    from .shape import reasoning_placement

    profile = _rendered_with(tokenizer, prompt_format)[1]
    if options.reasoning != "auto" or profile is None or reasoning_placement(profile, options) != "inline":
        return None
    name = getattr(tokenizer, "name_or_path", "") or "the chat template"
    return (f"{name} has no place for reasoning: --reasoning auto writes a record's reasoning_content inline, as "
            "<think>...</think> before the answer (the exported template does the same); pass --reasoning drop to "
            "leave it out")


def export_chat_template(tokenizer, recipe: RenderRecipe) -> str:
    """The chat template an export ships, so that `apply_chat_template(messages, tools=tools)` on the messages a
    client sends (OpenAI style: `loss` gone, content None on a call-only turn, arguments as objects, as vLLM
    passes them) gives the text training saw. The tokenizer's own template where it already does, on every
    battery case (check.py); else that template behind a prelude (prompt_formats/export_prelude.jinja) that
    rewrites the messages as the build did: the prompt format, inline reasoning, and the reshapings the profile
    measured (calls split one per turn, arguments as JSON text, results in the template's role, strict
    alternation merged, tools where the template reads them, the system folded into the first user turn).
    chatglm3 replaces the whole template and reads messages already rewritten (`metadata`, `observation`
    turns): the prelude writes OpenAI-style messages that way, in front of that template. Not written by the
    prelude: calls as text in a syntax the template ignores tool_calls for, Mistral's and Kimi's call ids, and
    results the template JSON-quotes (Jinja cannot parse them)."""
    from .profile import profile_template, special_kwargs
    from .prompt_formats import FORMATS_DIR, format_template

    base = tokenizer.chat_template
    if recipe.prompt_format == "chatglm3":  # the format's own whole template, after the prelude's rewrite
        base = format_template("chatglm3")
    if not isinstance(base, str) or not base:
        return base  # no template, or several named ones: the build rendered with none of them (render.mask)
    p = profile_template(base, tuple(sorted({**special_kwargs(tokenizer), **recipe.template_kwargs}.items())))
    if recipe.prompt_format is None and recipe.reasoning != "inline" and renders_as_built(tokenizer, base, recipe):
        return base
    from ..tool_calls import ONE_CALL_PER_TURN

    syntax = None if p.native_calls else recipe.call_syntax
    one_call = syntax in ONE_CALL_PER_TURN if syntax else p.one_call_per_turn
    flags = {"tt_format": recipe.prompt_format, "tt_merge": p.strict_alternation, "tt_fold": p.system_fold,
             "tt_inline": recipe.reasoning == "inline", "tt_one_call": one_call, "tt_syntax": syntax,
             "tt_args_string": p.args_as_string, "tt_content_none": p.content_none, "tt_tool_role": p.tool_role,
             "tt_rsn_field": p.reasoning_field if recipe.reasoning is None else None,
             "tt_parts": sorted(p.content_parts), "tt_needs_list": p.needs_tool_list, "tt_fill": p.fill_tool_fields,
             "tt_where": p.tools_where}
    settings = "".join(f"{{%- set {k} = {json.dumps(v)} %}}" for k, v in flags.items()) + "\n"
    settings = settings.replace("= true %", "= True %").replace("= false %", "= False %").replace("= null %", "= None %")
    system_prompt = "{%- macro tt_system_prompt(system, tools) %}" + format_template(recipe.prompt_format) + \
        "{%- endmacro %}\n" if recipe.prompt_format in ("tool-prompt", "react") else ""
    return system_prompt + settings + (FORMATS_DIR / "export_prelude.jinja").read_text() + base


def client_messages(record: dict) -> list[dict]:
    """The record's messages as a chat client sends them: no trajtune `loss` flags, content None where a
    call-only turn has none."""
    out = []
    for m in record["messages"]:
        m = {k: v for k, v in m.items() if k not in ("loss", "continues_turn")}
        if m["role"] == "assistant" and m.get("tool_calls") and not m.get("content"):
            m["content"] = None
        out.append(m)
    return out


def renders_as_built(tokenizer, template: str, recipe: RenderRecipe) -> bool:
    """Whether `template`, given client messages (`client_messages`), renders every battery case (check.py) the
    recipe's build renders as the build's text (up to a stop token the build appends after an open last turn),
    and prompts each trained turn as its per-turn sample's context; cases the build declines are skipped."""
    import copy

    from ..trajectory import validate_record
    from .check import BATTERY
    from .errors import RenderError
    from .mask import render_with_mask
    from .options import RenderOptions
    from .per_turn import render_turns
    from .profile import profile_template, render_text, special_kwargs
    from .shape import reasoning_placement

    options = RenderOptions(tuple(sorted(recipe.template_kwargs.items())), reasoning=recipe.reasoning or "auto")
    special = {**special_kwargs(tokenizer), **recipe.template_kwargs}
    for record in BATTERY.values():
        record = validate_record(copy.deepcopy(record))
        if recipe.reasoning is None and any(m.get("reasoning_content") for m in record["messages"]):
            # Reasoning in the data went to the template's own field, or there was none: a case that would write
            # it inline says nothing of this build.
            if reasoning_placement(profile_template(template, tuple(sorted(special.items()))), options) == "inline":
                continue
        messages, tools = client_messages(record), record.get("tools") or None
        try:
            want = render_with_mask(copy.deepcopy(record), tokenizer, recipe.prompt_format, options=options).text
        except (RenderError, TrajtuneError):
            want = None
        try:
            contexts = {s.text[:s.trained_spans[0][0]] for s in
                        render_turns(copy.deepcopy(record), tokenizer, recipe.prompt_format, options)}
        except (RenderError, TrajtuneError):
            contexts = None
        try:
            if want is not None:
                got = render_text(template, messages, tools, False, special)
                if got != want and not (want.startswith(got) and want[len(got):] in recipe.stop_tokens):
                    return False
            # Each trained turn's prompt, as its per-turn sample was trained after it.
            for i, m in enumerate(record["messages"]):
                if contexts is not None and m["role"] == "assistant" and m.get("loss", True) and \
                        render_text(template, messages[:i], tools, True, special) not in contexts:
                    return False
        except Exception:  # the template rejects what a client sends
            return False
    return True


def load_recipe(model_dir: str | Path) -> RenderRecipe | None:
    """The rendering recipe a model was trained with: from an export's trajtune.json, or a built dataset's
    manifest.json. None when the directory has neither (a model trajtune did not train: render it with its own
    chat template as is); TrajtuneError when the file is there but unreadable or holds no valid recipe.
    Example: `load_recipe("runs/agent/final").prompt_format` -> "tool-prompt"."""
    d = Path(model_dir)
    for name in ("trajtune.json", "manifest.json"):
        path = d / name
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise TrajtuneError(f"{path}: not readable JSON ({e})") from None
            if not isinstance(info, dict) or info.get("recipe") is None:
                raise TrajtuneError(f"{path} has no rendering recipe ('recipe'); it was written by an older trajtune: "
                                    "rebuild the data (trajtune build) and train or export again")
            return RenderRecipe.from_dict(info["recipe"], str(path))
    return None
