from perceptlm.connectors.mapping import Connector, MappingConnector, flatten_layers, mlp
from perceptlm.connectors.qpmapper import QPMapper

CONNECTORS = {"mapping": MappingConnector}

__all__ = ["CONNECTORS", "Connector", "MappingConnector", "QPMapper", "flatten_layers", "mlp"]
