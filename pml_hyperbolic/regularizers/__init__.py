"""pml regularizers (``BaseRegularizer`` subclasses) for the proxies of this package's losses."""

from .hyphc_proxy_regularizer import HypHCProxyRegularizer
