"""The machine's HTTP ceiling: FastAPI endpoints that do nothing but answer.

`python bench/bare_app.py PORT [PROCESSES]`: POST /v1/purchases reads the body and answers 202;
GET /v1/me answers a member-sized JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, status

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # as the services


@app.post("/v1/purchases", status_code=status.HTTP_202_ACCEPTED)
async def accept(request: Request) -> dict[str, Any]:
    await request.body()
    return {"status": "accepted"}


MEMBER = {
    "customer_id": "cus-bare",
    "points": 120,
    "tier": "silver",
    "tier_progress": {"qualifying_points": 1200, "next_tier": "gold", "points_to_next": 800},
    "expiring": [{"points": 40, "expires_at": "2027-06-01T00:00:00Z"}],
}


@app.get("/v1/me")
async def me() -> dict[str, Any]:
    return MEMBER


if __name__ == "__main__":
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    target: Any = "bare_app:app" if processes > 1 else app  # several processes need an import string
    uvicorn.run(
        target,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=processes,
        app_dir=str(Path(__file__).parent),
        log_level="warning",
        access_log=False,
    )
