/* Host harness (not part of the bundle): the runtime binding of hwai_patch_runner.h forwarded to callbacks, so
   hwai can run the bundle's C glue on this host over TensorFlow Lite Micro's Python interpreter (ctypes). */
#include "hwai_patch_runner.h"

typedef int (*hwai_open_fn)(int, uint8_t *, size_t);
typedef int8_t *(*hwai_pointer_fn)(void);
typedef int (*hwai_invoke_fn)(void);
typedef void (*hwai_close_fn)(void);

static hwai_open_fn open_cb;
static hwai_pointer_fn input_cb, output_cb;
static hwai_invoke_fn invoke_cb;
static hwai_close_fn close_cb;

void hwai_host_bind(hwai_open_fn open, hwai_pointer_fn input, hwai_pointer_fn output, hwai_invoke_fn invoke,
                    hwai_close_fn close) {
  open_cb = open;
  input_cb = input;
  output_cb = output;
  invoke_cb = invoke;
  close_cb = close;
}

int hwai_patch_model_open(int model, uint8_t *region, size_t region_bytes) {
  return open_cb(model, region, region_bytes);
}
int8_t *hwai_patch_model_input(void) { return input_cb(); }
const int8_t *hwai_patch_model_output(void) { return output_cb(); }
int hwai_patch_model_invoke(void) { return invoke_cb(); }
void hwai_patch_model_close(void) { close_cb(); }
