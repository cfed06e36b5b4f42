//! AFL target `vector_clock`: see [`vkv_fuzz::check_vector_clock`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_vector_clock);
}
