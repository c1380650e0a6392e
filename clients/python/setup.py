"""The build hook: the protobuf classes are generated from the project's
proto/corral.proto when the package is built, so they cannot drift from the
daemon's, and none are committed."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto" / "corral.proto"


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        self._generate(Path(self.build_lib) / "corral_client")

    def _generate(self, out: Path) -> None:
        from grpc_tools import protoc

        if not PROTO.is_file():
            raise SystemExit(
                f"corral-client: {PROTO} not found; build from a checkout of corral "
                "(pip install clients/python), where the proto is two directories up"
            )
        out.mkdir(parents=True, exist_ok=True)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO.parent}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                str(PROTO),
            ]
        )
        if status != 0:
            raise SystemExit(f"corral-client: protoc failed on {PROTO} (status {status})")


setup(cmdclass={"build_py": BuildWithProtos})
