"""attnlab's optional native kernels. They are switched on explicitly, for a scope
(``with cpu.enabled(): ...``; the Trainer does it when ``TrainConfig.cpu_kernels`` is set), and
never by importing or loading them."""
