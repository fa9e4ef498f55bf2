"""The seed's payment service, run by ``make demo``: consumers, a service, its config."""
