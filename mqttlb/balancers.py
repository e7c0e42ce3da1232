"""The public path to the balancers: ``from mqttlb.balancers import create``.

The algorithms live in the pure core, ``mqttlb.core.balancers``; this module
re-exports its public names so code outside mqttlb (a script, a notebook, the
README's examples) keeps one stable import whatever the package's layout.
``register()`` here adds to the same registry the router reads.
"""

# ``X as X``: an explicit re-export of each public name of the core's package.
from .core.balancers import BadOption as BadOption
from .core.balancers import Balancer as Balancer
from .core.balancers import ConsistentHash as ConsistentHash
from .core.balancers import LeastConnections as LeastConnections
from .core.balancers import Ring as Ring
from .core.balancers import RoundRobin as RoundRobin
from .core.balancers import UnknownAlgorithm as UnknownAlgorithm
from .core.balancers import WeightedRandom as WeightedRandom
from .core.balancers import WeightedRoundRobin as WeightedRoundRobin
from .core.balancers import create as create
from .core.balancers import names as names
from .core.balancers import needs_key as needs_key
from .core.balancers import register as register
