"""Children: the zygote client, spares and warm children, invocations and the bodies they stream."""
