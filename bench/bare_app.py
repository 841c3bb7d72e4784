"""The machine's HTTP ceiling: a FastAPI endpoint that parses the body and answers 202, nothing else."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, status

app = FastAPI()


@app.post("/v1/purchases", status_code=status.HTTP_202_ACCEPTED)
async def accept(request: Request) -> dict[str, Any]:
    await request.body()
    return {"status": "accepted"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
