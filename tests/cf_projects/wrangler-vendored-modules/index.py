from arithmetic import mul

from js import Response
def on_fetch(request):
	if request.url.endswith("/vendored"):  # added for Corral: python_modules/ is on sys.path
		import mod1
		import mod2
		return Response.new(f"mod2.hello() = {mod2.hello()}, mod1 from {mod1.__name__}")
	return Response.new(f"py hello world {mul(2,3)}")
