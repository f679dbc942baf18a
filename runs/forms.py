"""Forms of the run pages. The new-run form is built from the chosen recipe's config keys.

Bounds appear on the inputs for the browser, but the recipe stays the one judge of a config: the
form only turns text into typed values, and `run_enqueue` refuses what the recipe refuses, with
errors keyed `config.<key>`, which are this form's field names.
"""

from typing import Any

from django import forms
from django.core.validators import ProhibitNullCharactersValidator

from runs.models import RunStatus
from runs.recipes import MAX_DEVICES, POOL_NAME, ConfigKey, Recipe, all_recipes
from runs.selectors import RUN_ORDERINGS
from tunixops.validators import validate_text

CONFIG_PREFIX = "config."


def config_field_name(key: str) -> str:
    return f"{CONFIG_PREFIX}{key}"


def _bound(value: float) -> str:
    # Exact, as HTML's min/max need: `:g` would turn 2**31 - 1 into 2.14748e+09.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def describe_bounds(spec: ConfigKey) -> str:
    parts = []
    if spec.min is not None and spec.max is not None:
        parts.append(f"{_bound(spec.min)} to {_bound(spec.max)}")
    elif spec.min is not None:
        parts.append(f"at least {_bound(spec.min)}")
    elif spec.max is not None:
        parts.append(f"at most {_bound(spec.max)}")
    if spec.default is not None:
        parts.append(f"default {spec.default}")
    return ", ".join(parts)


def config_field(spec: ConfigKey) -> forms.Field:
    """An optional input for one config key: left empty, the recipe's default applies."""
    help_text = " ".join(p for p in (spec.help, describe_bounds(spec)) if p)
    common: dict[str, Any] = {
        "required": False,
        "label": spec.name,
        "help_text": help_text,
        "initial": spec.default,
    }
    if spec.choices:
        by_text = {str(choice): choice for choice in spec.choices}
        return forms.TypedChoiceField(
            choices=[("", "(recipe default)"), *((text, text) for text in by_text)],
            coerce=by_text.__getitem__,
            empty_value=None,
            **common,
        )
    if spec.type == "bool":
        return forms.BooleanField(**common)
    if spec.type == "str":
        return forms.CharField(max_length=spec.max_length, **common)
    attrs: dict[str, Any] = {"step": "1" if spec.type == "int" else "any"}
    if spec.min is not None:
        attrs["min"] = _bound(spec.min)
    if spec.max is not None:
        attrs["max"] = _bound(spec.max)
    widget = forms.NumberInput(attrs=attrs)
    if spec.type == "int":
        return forms.IntegerField(widget=widget, **common)
    return forms.FloatField(widget=widget, **common)


class RunForm(forms.Form):
    # Chosen on the page's own GET form, which re-renders this one with that recipe's keys.
    recipe = forms.ChoiceField(widget=forms.HiddenInput)
    name = forms.CharField(max_length=200, required=False)
    model_id = forms.CharField(max_length=200, required=False, label="Model")
    dataset_key = forms.CharField(
        max_length=200,
        required=False,
        label="Dataset",
        widget=forms.TextInput(attrs={"list": "dataset-keys", "autocomplete": "off"}),
        help_text="A dataset key (name-version); empty trains on the recipe's built-in data.",
    )
    pool = forms.RegexField(
        POOL_NAME,
        max_length=100,
        required=False,
        help_text="The pool of workers that may run it; empty means the recipe's.",
    )
    devices = forms.IntegerField(
        min_value=0,
        max_value=MAX_DEVICES,
        required=False,
        help_text="GPUs or TPU chips on one host; empty means the recipe's.",
    )

    def __init__(self, *args: Any, recipe: Recipe, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chosen = recipe
        recipe_field = self.fields["recipe"]
        assert isinstance(recipe_field, forms.ChoiceField)
        recipe_field.choices = [(name, name) for name in sorted(all_recipes())]
        recipe_field.initial = recipe.name
        self.fields["pool"].widget.attrs["placeholder"] = recipe.pool
        self.fields["devices"].widget.attrs["placeholder"] = str(recipe.devices)
        if recipe.default_model_id:
            self.fields["model_id"].widget.attrs["placeholder"] = recipe.default_model_id
            self.fields["model_id"].help_text = f"Empty means {recipe.default_model_id}."
        for spec in recipe.keys.values():
            self.fields[config_field_name(spec.name)] = config_field(spec)
        # One rule and one message for NUL and lone surrogates, as in the API, instead of
        # Django's NUL-only validator.
        for field in self.fields.values():
            if isinstance(field, forms.CharField):
                field.validators = [
                    v
                    for v in field.validators
                    if not isinstance(v, ProhibitNullCharactersValidator)
                ]
                field.validators.append(validate_text)

    def config_fields(self) -> list[forms.BoundField]:
        return [self[config_field_name(name)] for name in self.chosen.keys]

    def config(self) -> dict[str, Any]:
        """The typed values given; a key left empty is left to the recipe's default."""
        values: dict[str, Any] = {}
        for name, spec in self.chosen.keys.items():
            value = self.cleaned_data.get(config_field_name(name))
            # An unticked box without a default says nothing; with a default it says "false".
            if value is None or value == "" or (value is False and spec.default is None):
                continue
            values[name] = value
        return values


class RunFilterForm(forms.Form):
    status = forms.ChoiceField(required=False)
    recipe = forms.ChoiceField(required=False)
    # Set by the column headers' links; the filter form passes it on unchanged.
    sort = forms.ChoiceField(
        required=False, choices=[(key, key) for key in RUN_ORDERINGS], widget=forms.HiddenInput
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        status = self.fields["status"]
        recipe = self.fields["recipe"]
        assert isinstance(status, forms.ChoiceField) and isinstance(recipe, forms.ChoiceField)
        status.choices = [("", "any status"), *RunStatus.choices]
        recipe.choices = [("", "any recipe"), *((n, n) for n in sorted(all_recipes()))]


class ContinueForm(forms.Form):
    """Continue a finished run from one of its committed steps, with changed settings."""

    step = forms.TypedChoiceField(coerce=int, label="From checkpoint step")
    name = forms.CharField(max_length=200, required=False)

    def __init__(
        self, *args: Any, recipe: Recipe, steps: list[int], config: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.chosen = recipe
        step = self.fields["step"]
        assert isinstance(step, forms.TypedChoiceField)
        step.choices = [(s, str(s)) for s in reversed(steps)]
        step.initial = steps[-1] if steps else None
        for spec in recipe.keys.values():
            field = config_field(spec)
            field.initial = config.get(spec.name, spec.default)
            self.fields[config_field_name(spec.name)] = field

    def config_fields(self) -> list[forms.BoundField]:
        return [self[config_field_name(name)] for name in self.chosen.keys]

    def config(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.chosen.keys:
            value = self.cleaned_data.get(config_field_name(name))
            if value is not None and value != "":
                values[name] = value
        return values
