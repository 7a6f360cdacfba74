-- store_notice.lua (after guard.lua): nothing but the guard, called as a read. A read
-- made in Python (checked_read) that found the store's write count below this
-- process's mark calls it, so that the store is marked as gone back as a script
-- marks it (only when it still is), and the guard's refusal says what it found.
return 0
