"""The method registry: each method's YAML is its Config dataclass, options are type-checked,
and registration states whether the method trains."""
import dataclasses

import pytest
import yaml

from qbench.cli import CONF_DIR
from qbench.methods import METHODS, Method, create_method, register_method
from qbench.validate import ConfigError


def method_yaml(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "method" / f"{name}.yaml").read_text())


def test_every_method_has_a_config_file_and_every_config_file_a_method():
    assert sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")) == sorted(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_yaml_of_a_method_holds_exactly_its_config_fields_and_defaults(name):
    options = method_yaml(name)
    assert options.pop("name") == name
    defaults = {f.name: f.default for f in dataclasses.fields(METHODS[name].Config)}
    assert options == defaults
    create_method(method_yaml(name))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_wrong_value_type_or_unknown_option_is_one_config_error(name):
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    with pytest.raises(ConfigError, match=f"method.colour is not an option of method {name}"):
        create_method({"name": name, "colour": "red"})
    if "act_signed" in fields:
        with pytest.raises(ConfigError, match=f"method.act_signed='maybe' is not allowed for method {name}; use true"):
            create_method({"name": name, "act_signed": "maybe"})


@pytest.mark.parametrize("name", ["apot", "lsqplus"])
def test_auto_signedness_is_refused_where_the_method_cannot_decide_it(name):
    with pytest.raises(ConfigError, match=f"method.act_signed='auto' is not allowed for method {name}"):
        create_method({"name": name, "act_signed": "auto"})


@pytest.mark.parametrize("name,signed", [("lsq", None), ("faq", None), ("ptq_nearest", None)])
def test_auto_signedness_leaves_the_grid_to_calibration(name, signed):
    from qbench.quant.convert import LayerPrecision

    method = create_method({"name": name, "act_signed": "auto"})
    assert method.input_quantizer(LayerPrecision(4, 4)).signed is signed
    assert method.input_quantizer(LayerPrecision(4, 4, input_signed=True)).signed is True


def test_registration_must_say_whether_the_method_trains():
    with pytest.raises(TypeError, match="trains"):
        register_method("half_done")(Method)
    assert "half_done" not in METHODS
    assert {name for name, cls in METHODS.items() if cls.trains} == {"lsq", "lsqplus", "apot", "faq"}
    assert [name for name, cls in METHODS.items() if not cls.quantizes] == ["fp"]
