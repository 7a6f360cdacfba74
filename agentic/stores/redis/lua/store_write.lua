-- store_write.lua (after guard.lua): the plain writes that are no script of their
-- own (an allowance, a model's quota, a consumer's position), made only while the
-- store is the one this process opened and has not gone back (the guard counts
-- them too). ARGV: the commands, each its number of words and then its words.
-- Reply: each command's reply.
local replies, at = {}, 1
while at <= #ARGV do
  local words = tonumber(ARGV[at])
  replies[#replies + 1] = redis.call(unpack(ARGV, at + 1, at + words))
  at = at + words + 1
end
return replies
