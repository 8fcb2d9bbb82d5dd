"""The stages of examples/hello.toml: how to write a Stage."""

from __future__ import annotations

from dataclasses import dataclass

from framework.stage import Stage


@dataclass(frozen=True)
class GreetConfig:
    greeting: str = "hello"


class Greet(Stage):
    """Each Slice greets the visit; the master logs every greeting."""

    ConfigClass = GreetConfig

    def process(self, ctx, payload):
        return f"{self.config.greeting} from slice {ctx.slice_index} to fov {ctx.key}"

    def postprocess(self, ctx, results):
        for line in results:
            ctx.log.info(line)


class Count(Stage):
    """Runs once the detection event is in: each Slice counts its share of the paths."""

    def preprocess(self, ctx):
        return ctx.events["detection.diasources_ready"].body["paths"]

    def process(self, ctx, paths):
        return len(paths[ctx.slice_index :: ctx.n_slices])

    def postprocess(self, ctx, results):
        ctx.log.info("fov %s: %d path(s) over %d slice(s)", ctx.key, sum(results), len(results))
