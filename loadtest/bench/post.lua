-- wrk: POST one image file (the script's argument) to the service, as image/jpeg.
--   wrk -t1 -c32 -d10s -s loadtest/bench/post.lua http://127.0.0.1:8000/v1/classify -- img.jpg
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*all")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "image/jpeg"
end
