"""Packaging: the top-level folders are the subpackages of one import namespace, `trajtune`.

`launcher/` imports as `trajtune.launcher`, `data_builders/` as `trajtune.data_builders`, and so on; the root
`__init__.py` is the `trajtune` package itself. Works for `pip install .`, wheels and `pip install -e .`.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SUBPACKAGES = ["launcher", "trainer", "data_builders", "eval"]


class BuildPy(build_py):
    """Keep this file out of the package: the root folder is `trajtune`, but setup.py is not part of it."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "trajtune" and m[1] == "setup")]


setup(
    name="trajtune",
    version="0.1.0",
    description="Turn open LLMs into tool-calling agents: convert, render, build, train, evaluate.",
    python_requires=">=3.10",
    # Every package below the top-level folders (wings such as data_builders/envs/ included).
    packages=["trajtune"] + [f"trajtune.{p}" for p in SUBPACKAGES]
    + [f"trajtune.{p}.{sub}" for p in SUBPACKAGES for sub in find_packages(p)],
    package_dir={"trajtune": "."} | {f"trajtune.{p}": p for p in SUBPACKAGES},
    package_data={"trajtune": ["ds_configs/*.json", "slurm/*.sbatch"], "trajtune.data_builders.render": ["prompt_formats/*.jinja"]},
    cmdclass={"build_py": BuildPy},
    install_requires=[
        "torch>=2.4",
        "transformers>=4.56",
        "tokenizers>=0.21",  # encode_batch_fast
        "datasets>=3.0",
        "deepspeed>=0.19.3",  # LoRA + ZeRO-3 + gradient checkpointing: the recompute fix (DeepSpeed PR 8148)
        "sentencepiece",
        "jsonschema>=4.0",
        "pyyaml",
        "rich",
        "tqdm",
        "safetensors",
        "peft",
        "tensorboard",
        "matplotlib",
        "psutil",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6", "liger-kernel"],
        "serve": ["fastapi", "uvicorn"],
        "agents": ["openai>=1.40"],  # the openai: policy (any OpenAI-compatible endpoint)
        "dev": ["pytest", "ruff", "hypothesis", "build", "trl", "openai>=1.40"],
    },
    entry_points={"console_scripts": ["trajtune=trajtune.launcher.cli:main"]},
)
