"""``fabstir host --search-upstream URL --diffusion-upstream URL``: the host process really
calls the sidecars written for the tests (127.0.0.1), and the client classes work through it."""

from __future__ import annotations

import base64

from langchain_fabstir import FabstirImageGenerationTool, FabstirSearchRetriever
from langchain_fabstir.cli import start_host_process
from tests.sidecars import LoopThread, diffusion_sidecar, read_png, search_sidecar


def test_the_flags_reach_the_routes() -> None:
    lt = LoopThread()
    try:
        search = lt.enter(search_sidecar())
        diffusion = lt.enter(diffusion_sidecar())
        proc, url = start_host_process(
            "--engine",
            "echo",
            "--search-upstream",
            search.url,
            "--diffusion-upstream",
            diffusion.url,
        )
        try:
            docs = FabstirSearchRetriever(host_url=url, k=2).invoke("fabstir")
            assert [d.metadata["title"] for d in docs] == [
                "fabstir - result 0",
                "fabstir - result 1",
            ]
            content = FabstirImageGenerationTool(host_url=url, size="256x256").invoke(
                {"prompt": "a kite"}
            )
            assert read_png(base64.b64decode(content[1]["base64"]))[:2] == (256, 256)
            assert len(search.requests) == len(diffusion.requests) == 1
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        lt.close()


def test_without_the_flags_there_is_no_upstream() -> None:
    from langchain_fabstir.cli import _parser

    args = _parser().parse_args(["host", "--engine", "echo"])
    assert args.search_upstream is None and args.diffusion_upstream is None  # 503, as nodes
