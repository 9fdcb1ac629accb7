"""Test-only ClientApp: medlens' site, except that a site whose node config says ``poison="nan"`` sends NaN.

Loaded by the SuperNodes of ``test_flower_runtime`` through the app's ``clientapp`` component; medlens itself has
no way to make a site send a poisoned update.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from medlens.federated import flower_app

client_app = ClientApp()
client_app.query()(flower_app._query)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    reply = flower_app._train(msg, context)
    if context.node_config.get("poison") == "nan" and "weights" in reply.content:
        weights = flower_app.from_record(reply.content["weights"])
        key = next(k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating))
        weights[key] = np.full_like(weights[key], np.nan)
        reply.content["weights"] = flower_app.to_record(weights)
    return reply
