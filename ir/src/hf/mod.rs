//! Hugging Face config import.
