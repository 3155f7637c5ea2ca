// Ask Linux for transparent huge pages on a freshly allocated, still untouched CPU buffer.
// Large fresh buffers (today the BiLSTM's gate, output and gradient buffers) are mmap'd memory:
// writing them first costs one page fault per 4 KiB page (where first measured, a loss kernel's
// gradient buffer, the first write was ~4x slower than the whole kernel). With MADV_HUGEPAGE
// (THP mode "madvise", the common default) the kernel faults 2 MiB pages instead. Purely
// advisory: errors are ignored, other systems do nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace kdfast::cpu {

// KDFAST_HUGE_PAGES=off (read once) turns the advice off, to measure or to avoid stalls in
// the kernel's direct compaction where THP defrag is "madvise".
inline bool huge_page_advice_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("KDFAST_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "off") != 0;
  }();
  return on;
}

inline void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  if (ptr == nullptr || bytes < 4 * huge || !huge_page_advice_enabled()) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

}  // namespace kdfast::cpu
