"""Side-by-side benchmarks of deconvnet against Captum and the forward floor."""
