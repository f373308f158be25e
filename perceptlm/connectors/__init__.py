from perceptlm.connectors.base import Connector, flatten_layers
from perceptlm.connectors.clipcap import ClipCapConnector, global_embedding
from perceptlm.connectors.mapping import MappingConnector, mlp
from perceptlm.connectors.qformer import QFormer, QFormerConnector
from perceptlm.connectors.qpmapper import QPMapper
from perceptlm.connectors.registry import CONNECTORS, build_connector, connector_arguments, resolve_connector
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
    "connector_arguments",
    "flatten_layers",
    "global_embedding",
    "group_tokens",
    "mlp",
    "resolve_connector",
]
