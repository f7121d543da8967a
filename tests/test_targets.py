import re

import pytest

from edgempq.errors import ConfigError, DeviceError
from edgempq.schema import Target
from edgempq.targets import builtin_targets, load_target


def test_builtin_targets_load_and_round_trip_through_toml(tmp_path):
    assert {"host", "host-4t", "tflm-host", "linux-ssh", "android-adb"} <= set(builtin_targets())
    for name in builtin_targets():
        t = load_target(name)
        (tmp_path / f"{name}.toml").write_text(t.to_toml())
        assert Target.from_toml(tmp_path / f"{name}.toml") == t
        assert Target.from_json(t.to_json()) == t


def test_host_gives_int4_to_conv_and_linear_but_not_depthwise():
    t = load_target("host")
    assert "w4a8" in map(str, t.allowed("conv")) and "w4a8" in map(str, t.allowed("linear"))
    assert not any(p.weight_bits == 4 for p in t.allowed("dwconv"))
    assert [str(p) for p in t.allowed("grouped_conv")] == ["f32"]
    assert load_target("tflm-host").ram_kb == 256


BASE = 'name = "x"\nbackend = "litert"\n[precisions]\nconv = ["w8a8"]\ndwconv = ["w8a8"]\nlinear = ["w8a8"]\n'


@pytest.mark.parametrize("text,needle", [
    ("speed = 3\n" + BASE, "unknown key(s) speed"),
    (BASE + "fc = [\"w8a8\"]\n", "unknown key 'fc'"),
    (BASE.replace('linear = ["w8a8"]', 'linear = "w8a8"'), "precisions.linear must be a list"),
    (BASE.replace('"litert"', '"usb"'), "unknown backend 'usb'"),
    (BASE.replace('dwconv = ["w8a8"]', 'dwconv = ["w4a8"]'), "dwconv cannot take w4a8"),
    (BASE.replace('conv = ["w8a8"]\n', 'conv = ["w2a8"]\n', 1), "cannot be deployed"),
    (BASE.replace('linear = ["w8a8"]\n', ""), "missing ['linear']"),
    (BASE.replace('backend = "litert"', 'backend = "litert"\nthreads = 0'), "threads must be an integer from 1 to 256"),
    (BASE.replace('backend = "litert"', 'backend = "litert"\nthreads = 10000'), "from 1 to 256, not 10000"),
    (BASE.replace('backend = "litert"', 'backend = "litert"\nruns = 1000000000'), "runs must be an integer from 1 "
                                                                                   "to 100000, not 1000000000"),
    (BASE.replace('backend = "litert"', 'backend = "tflm"\nwarmup = 20000'), "warmup must be an integer from 0"),
    (BASE.replace('backend = "litert"', 'backend = "litert"\nmax_seconds = 1e9'), "max_seconds must be a positive "
                                                                                    "number up to 3600"),
    (BASE + "[connection]\nhost = \"pi\"\n", "unknown key(s) host for backend litert"),
    (BASE.replace('conv = ["w8a8"]\n', 'conv = ["int8"]\n', 1), "unknown precision 'int8'"),
    ("name = [", "not valid TOML"),
])
def test_bad_target_files_name_the_key(tmp_path, text, needle):
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_target(str(tmp_path / "t.toml"))


def test_unknown_target_name_lists_the_built_in_ones():
    with pytest.raises(ConfigError, match="choose one of .*host"):
        load_target("raspberry")


def test_templates_must_be_edited_before_use():
    from edgempq.backends import backend_for

    with pytest.raises(DeviceError, match="is a template"):
        backend_for(load_target("linux-ssh"))


@pytest.mark.parametrize("key,value,needle", [
    ("host", '"-oProxyCommand=touch x"', "must not start with '-'"),
    ("host", '"pi; rm -rf ~"', "may hold only"),
    ("user", '"a b"', "may hold only"),
    ("port", "70000", "1..65535"),
    ("port", '"22a"', "1..65535"),
    ("timeout_s", "0", "at least 1"),
])
def test_ssh_connection_values_cannot_smuggle_options(tmp_path, key, value, needle):
    text = (BASE.replace('"litert"', '"ssh"') + "[connection]\n" +
            ("" if key == "host" else 'host = "pi"\n') + f"{key} = {value}\n")
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_target(str(tmp_path / "t.toml"))


def test_adb_remote_dir_must_be_a_plain_absolute_path(tmp_path):
    text = BASE.replace('"litert"', '"adb"') + '[connection]\nremote_dir = "/data/local/tmp/my dir"\n'
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError, match="absolute path"):
        load_target(str(tmp_path / "t.toml"))


def test_toml_writer_escapes_what_it_writes(tmp_path):
    t = Target.from_dict({**load_target("host").to_dict(), "description": 'two\nlines "quoted" \\ back'})
    (tmp_path / "t.toml").write_text(t.to_toml())
    assert Target.from_toml(tmp_path / "t.toml") == t
