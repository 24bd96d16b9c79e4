def excluded(a,b):
	return a*b