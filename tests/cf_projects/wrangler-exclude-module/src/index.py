from arithmetic import mul

from js import Response
def on_fetch(request):
	print(f"hello {mul(2,3)}")
	try:
		import excluded_module
		print("excluded_module found")
	except ImportError:
		print("excluded_module not found")
	print(f"end")
	return Response.new(f"py hello world {mul(2,3)}")
