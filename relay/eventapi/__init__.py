"""The partner's protocol: how the relay speaks to Scalepoint's EventApi."""
