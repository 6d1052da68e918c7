-- wrk: POST one file (the script's first argument) to the service, as image/jpeg or as the
-- content type given second; a third and fourth argument add one header (name, value).
--   wrk -t1 -c32 -d10s -s loadtest/bench/post.lua http://127.0.0.1:8000/v1/classify -- img.jpg
--   wrk ... http://127.0.0.1:8000/v2/models/resnet50/infer -- v2.bin \
--       application/octet-stream Inference-Header-Content-Length 180
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*all")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2] or "image/jpeg"
  if args[3] then
    wrk.headers[args[3]] = args[4]
  end
end
