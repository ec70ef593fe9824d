"""The example accelerate configs under configs/accelerate/ are files `accelerate launch` accepts as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "configs" / "accelerate"
EXPECTED = {  # file -> (distributed type, processes, machines)
    "single_gpu.yaml": ("NO", 1, 1),
    "ddp_8gpu.yaml": ("MULTI_GPU", 8, 1),
    "fsdp_8gpu.yaml": ("FSDP", 8, 1),
    "fsdp_2node_8gpu.yaml": ("FSDP", 16, 2),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 1),
}


def _launch_args(path: Path):
    """The arguments `accelerate launch --config_file path` ends up with (it rejects unknown keys)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    return _validate_launch_command(args)[0]


def test_every_example_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_own_classes(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    kind, processes, machines = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (kind, processes, machines)
    assert config.mixed_precision == "no"  # vpt's train.precision decides
    args = _launch_args(CONFIGS / name)
    assert (args.num_processes, args.num_machines) == (processes, machines)
    assert args.use_fsdp == (kind == "FSDP") and args.use_deepspeed == (kind == "DEEPSPEED")


@pytest.mark.parametrize("name", ["fsdp_8gpu.yaml", "fsdp_2node_8gpu.yaml"])
def test_fsdp_configs_give_the_plugin_vpt_trains_under(name, monkeypatch):
    """What the launcher hands each process builds an FSDP2 plugin with sharded checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    for key, value in prepare_multi_gpu_env(_launch_args(CONFIGS / name)).items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.min_num_params == 1_000_000 and plugin.auto_wrap_policy is not None


def test_deepspeed_config_is_zero_stage_2():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.deepspeed_config["zero_stage"] == 2
