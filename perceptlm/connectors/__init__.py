from perceptlm.connectors.clipcap import ClipCapConnector, global_embedding
from perceptlm.connectors.factory import CONNECTORS, build_connector
from perceptlm.connectors.mapping import Connector, MappingConnector, flatten_layers, mlp
from perceptlm.connectors.qformer import QFormer, QFormerConnector
from perceptlm.connectors.qpmapper import QPMapper
from perceptlm.connectors.resampler import TokenResampler, group_tokens

__all__ = [
    "CONNECTORS",
    "ClipCapConnector",
    "Connector",
    "MappingConnector",
    "QFormer",
    "QFormerConnector",
    "QPMapper",
    "TokenResampler",
    "build_connector",
    "flatten_layers",
    "global_embedding",
    "group_tokens",
    "mlp",
]
