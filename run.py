"""hydraformer's entry point: compose the config, run the task (``task=report|...``)."""

import hydra
from omegaconf import DictConfig

from builder.cli import precheck_or_exit
from builder.schema import register_schemas

register_schemas()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from builder.tasks import run_task

    return run_task(cfg)


if __name__ == "__main__":
    precheck_or_exit()
    main()
